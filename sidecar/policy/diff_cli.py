"""The ``policy diff`` command line (see :mod:`sidecar.policy.diff`)."""

from __future__ import annotations

import argparse
import os
from typing import Any


def register_diff(actions: Any) -> None:
    diff = actions.add_parser(
        "diff", help="replay a sample through two policy sets and show what would change",
    )
    diff.add_argument("old", help="the policy directory in force")
    diff.add_argument("new", help="the policy directory that would replace it")
    diff.add_argument(
        "sample", nargs="*",
        help="recorded export requests (OTLP/JSON or protobuf); default: the built-in sample "
             "(the PCI probe's card numbers in every place, and a shop trace)",
    )
    diff.add_argument("--signal", choices=["traces", "metrics", "logs"], help="signal of protobuf samples (traces)")
    diff.add_argument("--transport", default="grpc", choices=["grpc", "http"])
    diff.add_argument("--path", default="otlp_sidecar/main", help="package path of the decision document")
    diff.add_argument(
        "--show-values", action="store_true",
        help="print values before the change too (card numbers stay masked in any case)",
    )
    diff.add_argument(
        "--hash-key-file", default=os.environ.get("SIDECAR_POLICY_HASH_KEY_FILE", ""),
        help="HMAC key for `hash` (default: $SIDECAR_POLICY_HASH_KEY_FILE; else a throwaway key)",
    )
    from sidecar.policy.cli import pipe_safe

    diff.set_defaults(handler=pipe_safe(cmd_diff))


def cmd_diff(args: argparse.Namespace) -> int:
    """0: no difference, 1: the sets differ on the sample, 2: trouble (as diff(1))."""
    from sidecar.configkit import ConfigError
    from sidecar.policy.cli import _fail, _Session, write_lines
    from sidecar.policy.diff import builtin_sample, diff_sets, read_sample
    from sidecar.policy.errors import PolicyError

    try:
        samples = [read_sample(path, args.signal) for path in args.sample] or builtin_sample()
    except OSError as exc:
        return _fail(f"cannot read {exc.filename}: {exc.strerror}")
    except ValueError as exc:
        return _fail(str(exc))
    sessions = []
    for root in (args.old, args.new):
        try:
            sessions.append(_Session(argparse.Namespace(dir=root, path=args.path, hash_key_file=args.hash_key_file)))
        except (PolicyError, ConfigError, OSError) as exc:
            return _fail(f"{root}: {exc}")
    old, new = sessions
    new.hash_key, new.key_note = old.hash_key, old.key_note  # one key: hashes compare
    try:
        lines, differs = diff_sets(old, new, samples, transport=args.transport, show_values=args.show_values)
    except (PolicyError, ConfigError, ValueError) as exc:
        return _fail(str(exc))
    code = write_lines(lines)
    return code or (1 if differs else 0)


