"""The ``otlp-sidecar`` command line: ``run``, ``config check`` and the components' commands."""

from __future__ import annotations

import argparse
import importlib
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
    return int(handler(args) or 0)
