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

    config = subparsers.add_parser("config", help="check or document the configuration")
    config_sub = config.add_subparsers(dest="config_command", metavar="ACTION")
    check = config_sub.add_parser("check", help="validate a config file (and the environment)")
    check.add_argument("file", nargs="?", help="TOML config file")
    check.add_argument("--print", action="store_true", help="print the resolved config (secrets hidden)")
    check.set_defaults(handler=cmd_config_check)
    docs = config_sub.add_parser("docs", help="print docs/configuration.md")
    docs.set_defaults(handler=cmd_config_docs)


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
    try:
        return asyncio.run(serve(config, grace=args.grace))
    except config_mod.ConfigError as exc:
        print(f"otlp-sidecar: configuration error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"otlp-sidecar: cannot start: {exc}", file=sys.stderr)
        return 1


def cmd_config_check(args: argparse.Namespace) -> int:
    from sidecar import config as config_mod
    from sidecar.configkit import redacted

    try:
        config = config_mod.load(args.file)
    except config_mod.ConfigError as exc:
        print(f"invalid: {exc}", file=sys.stderr)
        return 1
    print(f"ok: {args.file or '(defaults and environment)'}")
    if args.print:
        print(json.dumps(redacted(config), indent=2))
    return 0


def cmd_config_docs(args: argparse.Namespace) -> int:
    from sidecar.config import render_docs

    sys.stdout.write(render_docs())
    return 0
