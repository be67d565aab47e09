"""The ``otlp-sidecar`` command line: ``run``, ``config check`` and the components' commands."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from collections.abc import Sequence

from sidecar import __version__

#: modules that add their own subcommands with ``register(subparsers)``
COMMAND_MODULES = (
    "sidecar.commands",
    "sidecar.policy.cli",
    "sidecar.tls.cli",
    "sidecar.webhook.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otlp-sidecar",
        description="Per-pod OTLP policy sidecar: receive, apply Rego policies, forward upstream.",
    )
    parser.add_argument("--version", action="version", version=f"otlp-sidecar {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        code = int(handler(args) or 0)
        sys.stdout.flush()
    except BrokenPipeError:  # every command: a reader that goes away (``| head``) ends it quietly
        return reader_gone()
    return code


def reader_gone() -> int:
    """stdout's reader is gone: exit 141 (128 + SIGPIPE, as a C tool does), without a traceback."""
    # point stdout at /dev/null so that the interpreter's final flush is silent
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 128 + signal.SIGPIPE
