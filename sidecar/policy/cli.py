"""``otlp-sidecar policy test | eval | explain``: run, query and try out the policies.

Kept light at import: the engine is imported inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

DEFAULT_DIR = "policies"
RULE = "-" * 80


def register(subparsers: Any) -> None:
    policy = subparsers.add_parser("policy", help="test, evaluate and explain the Rego policies")
    actions = policy.add_subparsers(dest="policy_command", metavar="ACTION")

    test = actions.add_parser("test", help="run every test_ rule of the _test.rego files (like opa test)")
    test.add_argument("dir", nargs="?", help="policy directory (default: $SIDECAR_POLICY_DIR or ./policies)")
    test.add_argument("--path", default="otlp_sidecar/main", help="package path of the decision document")
    test.add_argument("-q", "--quiet", action="store_true", help="print failures and the summary only")
    test.set_defaults(handler=cmd_test)

    evaluate = actions.add_parser("eval", help="print the decision and the compiled plan for one input")
    evaluate.add_argument("--input", "-i", required=True, metavar="FILE", help="policy input as JSON")
    _common(evaluate)
    evaluate.set_defaults(handler=cmd_eval)

    explain = actions.add_parser(
        "explain", help="run a captured OTLP/JSON payload through the policies and show what changes",
    )
    explain.add_argument("file", help="OTLP/JSON export request (traces, metrics or logs)")
    explain.add_argument("--signal", choices=["traces", "metrics", "logs"], help="default: from the payload")
    explain.add_argument("--transport", default="http", choices=["grpc", "http"])
    explain.add_argument(
        "--show-values", action="store_true",
        help="also print the values before the change (they may be sensitive)",
    )
    _common(explain)
    explain.set_defaults(handler=cmd_explain)
    policy.set_defaults(handler=lambda _args: (policy.print_help(sys.stderr), 2)[1])


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", help="policy directory (default: $SIDECAR_POLICY_DIR or ./policies)")
    parser.add_argument("--path", default="otlp_sidecar/main", help="package path of the decision document")
    parser.add_argument(
        "--hash-key-file", default=os.environ.get("SIDECAR_POLICY_HASH_KEY_FILE", ""),
        help="HMAC key for `hash` (default: $SIDECAR_POLICY_HASH_KEY_FILE; else a throwaway key)",
    )


def _policy_dir(value: str | None) -> str:
    return value or os.environ.get("SIDECAR_POLICY_DIR") or DEFAULT_DIR


def _fail(message: str) -> int:
    print(f"otlp-sidecar policy: {message}", file=sys.stderr)
    return 2


# ------------------------------------------------------------------------- test


def cmd_test(args: argparse.Namespace) -> int:
    from sidecar.policy.errors import PolicyLoadError
    from sidecar.policy.loader import precheck

    root = _policy_dir(args.dir)
    try:
        results = precheck(root, args.path, True)
    except PolicyLoadError as exc:
        return _fail(str(exc))
    current = None
    for result in results:
        if args.quiet and result.passed:
            continue
        if result.file != current:
            current = result.file
            print(f"{result.file}:")
        verdict = "PASS" if result.passed else ("ERROR" if result.error else "FAIL")
        print(f"{result.name}: {verdict} ({result.seconds * 1000:.1f}ms)")
        if result.error:
            print(f"  {result.error}")
    passed = sum(r.passed for r in results)
    failed = len(results) - passed
    print(RULE)
    if not results:
        print("no tests found")
        return 0
    if passed:
        print(f"PASS: {passed}/{len(results)}")
    if failed:
        print(f"FAIL: {failed}/{len(results)}")
    return 1 if failed else 0


# ------------------------------------------------------------------------- eval


class _Session:
    """A compiled policy set with the pod identity from the environment, for the CLI."""

    def __init__(self, args: argparse.Namespace) -> None:
        from sidecar.config import PodConfig
        from sidecar.configkit import load_section
        from sidecar.policy.loader import load_policy

        self.root = _policy_dir(args.dir)
        self.path = args.path
        self.compiled, _ = load_policy(self.root, self.path, run_tests=False)
        self.pod = load_section(PodConfig, "pod", None, os.environ).identity()
        self.key_note = ""
        if args.hash_key_file:
            with open(args.hash_key_file, "rb") as handle:
                self.hash_key = handle.read().strip()
        else:
            self.hash_key = os.urandom(32)
            self.key_note = "throwaway key (no --hash-key-file): hashes will not match the sidecar's"

    def request(self, partial: dict[str, Any]) -> dict[str, Any]:
        from sidecar.policy.pod_input import pod_input

        return {
            "signal": partial.get("signal", "traces"),
            "resource": partial.get("resource", {}),
            "pod": {**pod_input(self.pod), **partial.get("pod", {})},
            "peer": {"address": "", "tls": False, "spiffe_id": "", **partial.get("peer", {})},
            "transport": partial.get("transport", "grpc"),
        }

    def plan(self, request: dict[str, Any]) -> tuple[Any, Any]:
        """The decision and the plan as the sidecar compiles it (the PCI guarantee, exemptions)."""
        from sidecar.policy.decision import compile_plan, pod_settings_from

        document = self.compiled.query("pod_settings", self.request({"resource": {}}))
        settings = pod_settings_from(document, "pod_settings")
        decisions = self.compiled.query("decisions", request)
        plan = compile_plan(
            decisions, self.compiled.policy_set.file_of_package, hash_key=self.hash_key,
            exemptions=settings.exemptions,
        )
        return decisions, plan


def plan_as_json(plan: Any) -> dict[str, Any]:
    """A plan as JSON, without its key."""
    import dataclasses

    document = dataclasses.asdict(plan)
    document.pop("hash_key", None)
    return document


def cmd_eval(args: argparse.Namespace) -> int:
    from sidecar.configkit import ConfigError
    from sidecar.policy.errors import PolicyError

    try:
        with open(args.input, encoding="utf-8") as handle:
            partial = json.load(handle)
    except OSError as exc:
        return _fail(f"cannot read {args.input}: {exc.strerror}")
    except json.JSONDecodeError as exc:
        return _fail(f"{args.input} is not valid JSON: {exc.msg} at line {exc.lineno}")
    if not isinstance(partial, dict):
        return _fail(f"{args.input} must hold a JSON object (the policy input)")
    try:
        session = _Session(args)
        request = session.request(partial)
        decisions, plan = session.plan(request)
        pod_settings = session.compiled.query("pod_settings", session.request({"resource": {}}))
    except (PolicyError, ConfigError, OSError) as exc:
        return _fail(str(exc))
    output = {
        "policy_version": session.compiled.version,
        "input": request,
        "decisions": decisions,
        "plan": plan_as_json(plan),
        "pod_settings": pod_settings,
    }
    if session.key_note:
        output["note"] = session.key_note
    print(json.dumps(output, indent=2, sort_keys=True))
    return 0


# ------------------------------------------------------------------------- explain


def cmd_explain(args: argparse.Namespace) -> int:
    from sidecar.configkit import ConfigError
    from sidecar.policy.errors import PolicyError
    from sidecar.policy.explain import explain_payload

    try:
        with open(args.file, "rb") as handle:
            body = handle.read()
    except OSError as exc:
        return _fail(f"cannot read {args.file}: {exc.strerror}")
    try:
        session = _Session(args)
        lines = explain_payload(session, body, args.signal, args.transport, args.show_values)
    except (PolicyError, ConfigError, ValueError) as exc:
        return _fail(str(exc))
    print("\n".join(lines))
    return 0
