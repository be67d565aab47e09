"""``otlp-sidecar policy test | eval | explain | bundle``: run, query and try out the policies.

Kept light at import: the engine is imported inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from sidecar.cli import reader_gone
from sidecar.masked_text import mask_strings

DEFAULT_DIR = "policies"
RULE = "-" * 80


def register(subparsers: Any) -> None:
    policy = subparsers.add_parser("policy", help="test, evaluate and explain the Rego policies")
    actions = policy.add_subparsers(dest="policy_command", metavar="ACTION")

    test = actions.add_parser("test", help="run every test_ rule of the _test.rego files (like opa test)")
    from sidecar.policy.testing_cli import add_test_arguments

    add_test_arguments(test)
    test.set_defaults(handler=pipe_safe(cmd_test))

    evaluate = actions.add_parser(
        "eval", help="evaluate a Rego query (like opa eval), or print the decision and plan for one input",
    )
    evaluate.add_argument("query", nargs="?", help="Rego query, as opa eval takes it (default: decision and plan)")
    evaluate.add_argument("--input", "-i", metavar="FILE", help="input document as JSON")
    evaluate.add_argument("--format", "-f", choices=["json", "raw", "pretty"], default="json", help="with a query")
    evaluate.add_argument("--fail", action="store_true", help="exit 1 when the query is undefined (as opa eval --fail)")
    evaluate.add_argument(
        "--show-values", action="store_true",
        help="print card numbers in the input and the results as they are (masked otherwise)",
    )
    _common(evaluate)
    evaluate.set_defaults(handler=pipe_safe(cmd_eval))

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
    explain.set_defaults(handler=pipe_safe(cmd_explain))
    from sidecar.policy.diff_cli import register_diff

    register_diff(actions)
    from sidecar.policy.bundles.cli import register as register_bundle

    register_bundle(actions)
    policy.set_defaults(handler=lambda _args: (policy.print_help(sys.stderr), 2)[1])


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir", "-d", "--data", dest="dir", help="policy directory (default: $SIDECAR_POLICY_DIR or ./policies)",
    )
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


def _read_json(path: str) -> tuple[Any, str]:
    """The JSON document in ``path``, and "" ; or None and what is wrong with the file."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle), ""
    except OSError as exc:
        return None, f"cannot read {path}: {exc.strerror}"
    except json.JSONDecodeError as exc:
        return None, f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}"
    except UnicodeDecodeError as exc:
        return None, f"{path} is not UTF-8 text (byte {exc.start})"
    except RecursionError:
        return None, f"{path} nests too deeply to be read"


# ------------------------------------------------------------------------- test


def cmd_test(args: argparse.Namespace) -> int:
    from sidecar.policy.testing_cli import cmd_test as run_test

    return run_test(args, _policy_dir(args.dir))


# ------------------------------------------------------------------------- eval


class _Session:
    """A compiled policy set with the pod identity from the environment, for the CLI."""

    def __init__(self, args: argparse.Namespace) -> None:
        from sidecar.configkit import load_section
        from sidecar.identity import PodConfig
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

    if args.query:
        return _eval_query(args)
    if not args.input:
        return _fail("eval: give a query (as opa eval) or --input FILE (the decision and plan)")
    partial, problem = _read_json(args.input)
    if problem:
        return _fail(problem)
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
    print(json.dumps(output if args.show_values else mask_strings(output), indent=2, sort_keys=True))
    return 0


def _eval_query(args: argparse.Namespace) -> int:
    """``policy eval QUERY [-d DIR] [-i FILE] [--format F]``: as ``opa eval`` (exit 2 on error)."""
    from sidecar.policy.eval_query import evaluate, render

    document = None
    if args.input:
        document, problem = _read_json(args.input)
        if problem:
            return _fail(problem)
    root = args.dir or (_policy_dir(None) if os.path.isdir(_policy_dir(None)) else "")
    if root and not os.path.exists(root):
        print(json.dumps({"errors": [{"message": f"{root}: no such file or directory"}]}, indent=2))
        return 2
    outcome = evaluate(root, args.query, document)
    print(render(outcome if args.show_values else mask_strings(outcome), args.format))
    if "errors" in outcome:
        return 2
    return 1 if args.fail and not outcome.get("result") else 0


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
    return write_lines(lines)


def write_lines(lines: list[str]) -> int:
    """Print ``lines``; a reader that goes away (``| head``) ends the command quietly."""
    try:
        for line in lines:
            sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        return reader_gone()
    return 0


def pipe_safe(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``handler``, ending quietly (exit 141, 128 + SIGPIPE, as a C tool) when stdout's reader is gone."""

    def run(args: argparse.Namespace) -> int:
        try:
            code = handler(args)
            sys.stdout.flush()
        except BrokenPipeError:
            return reader_gone()
        return code

    return run


