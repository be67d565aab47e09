"""The spine's subcommands: ``run`` and ``config check`` / ``config docs``."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any


def register(subparsers: Any) -> None:
    run = subparsers.add_parser("run", help="run the sidecar until SIGTERM")
    run.add_argument("--config", "-c", metavar="FILE", help="TOML config file")
    run.add_argument("--grace", type=float, default=20.0, help="seconds to flush on shutdown (20)")
    run.set_defaults(handler=cmd_run)

    config = subparsers.add_parser(
        "config", help="check or document the configuration",
        description="Check the configuration as `run` would, or print its reference.",
    )
    config.set_defaults(handler=lambda args: _usage(config))
    config_sub = config.add_subparsers(dest="config_command", metavar="ACTION")
    check = config_sub.add_parser(
        "check", help="run every check `run` makes before serving, then exit (0: it would start)",
        description="Load the file and the environment, then run what `otlp-sidecar run` checks before "
        "it serves: certificates and keys, secrets, the pod's files, the policies with their tests "
        "and the PCI probe, the hash key. Exits 0 when `run` would start, 1 otherwise.",
    )
    check.add_argument("file", nargs="?", help="TOML config file")
    check.add_argument("--print", action="store_true", help="print the resolved config (secrets hidden)")
    check.set_defaults(handler=cmd_config_check)
    docs = config_sub.add_parser("docs", help="print docs/configuration.md")
    docs.set_defaults(handler=cmd_config_docs)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def cmd_run(args: argparse.Namespace) -> int:
    from sidecar import config as config_mod
    from sidecar import logsetup
    from sidecar.app import serve

    try:
        config = config_mod.load(args.config)
    except config_mod.ConfigError as exc:
        print(f"otlp-sidecar: configuration error: {exc}", file=sys.stderr)
        return 2
    logsetup.configure(config.log.level, config.log.format)
    return asyncio.run(serve(config, grace=args.grace))


def cmd_config_check(args: argparse.Namespace) -> int:
    from sidecar import config as config_mod
    from sidecar import logsetup
    from sidecar.app import check, start_error
    from sidecar.configkit import redacted

    try:
        config = config_mod.load(args.file)
    except config_mod.ConfigError as exc:
        print(f"invalid: {exc}", file=sys.stderr)
        return 1
    # warnings (a random hash key, a mode that does not mask, an ignored setting) go to stderr
    logsetup.configure("warning", config.log.format)
    try:
        asyncio.run(check(config))
    except Exception as exc:
        known = start_error(exc)
        if known is None:
            raise
        print(f"invalid: {exc}" if isinstance(exc, config_mod.ConfigError) else f"invalid: {known[0]}",
              file=sys.stderr)
        return 1
    print(f"ok: {args.file or '(defaults and environment)'}: `otlp-sidecar run` would start")
    if args.print:
        print(json.dumps(redacted(config), indent=2))
    return 0


def cmd_config_docs(args: argparse.Namespace) -> int:
    from sidecar.config import render_docs

    sys.stdout.write(render_docs())
    return 0
