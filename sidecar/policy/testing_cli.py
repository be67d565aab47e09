"""The ``policy test`` command line: arguments and output, as ``opa test`` has them."""

from __future__ import annotations

import argparse
import json
import os
import sys

from sidecar.policy import testing


def add_test_arguments(test: argparse.ArgumentParser) -> None:
    test.add_argument("dir", nargs="?", help="policy directory (default: $SIDECAR_POLICY_DIR or ./policies)")
    test.add_argument("--path", default="otlp_sidecar/main", help="package path of the decision document")
    test.add_argument("-v", "--verbose", action="store_true", help="show every test, passing ones too")
    test.add_argument("-q", "--quiet", action="store_true", help="non-passing tests and the counts only (the default)")
    test.add_argument(
        "-r", "--run", default="", metavar="REGEX", help="run only tests whose data.<package>.<rule> matches",
    )
    test.add_argument("-f", "--format", choices=["pretty", "json"], default="pretty", help="as opa test")
    test.add_argument(
        "-c", "--coverage", action="store_true",
        help="report coverage per file (computed by the opa binary: regopy gives none)",
    )
    test.add_argument("-z", "--exit-zero-on-skipped", action="store_true", help="skipped (todo_) tests exit 0")
    test.add_argument("--opa", help="the opa binary for print() output and coverage (default: $OPA, else PATH)")
    test.add_argument(
        "--no-engine-checks", action="store_true",
        help="skip what `run` checks besides the tests (vocabulary of the decisions, the PCI probe)",
    )
    test.add_argument(
        "--hash-key-file", default=os.environ.get("SIDECAR_POLICY_HASH_KEY_FILE", ""),
        help="HMAC key for the engine checks (default: $SIDECAR_POLICY_HASH_KEY_FILE; else a throwaway key)",
    )


def cmd_test(args: argparse.Namespace, root: str) -> int:
    """Run the tests (and the engine checks), print as ``opa test``; the exit code as OPA's."""
    import re

    try:
        re.compile(args.run)
    except re.error as exc:
        print(f"otlp-sidecar policy test: --run: invalid regular expression: {exc}", file=sys.stderr)
        return 1
    suite = testing.run_tests(root, args.path, args.run)
    if suite.errors:
        print("\n".join(testing.load_error_lines(suite.errors)), file=sys.stderr)
        return 1
    opa = testing.find_opa(args.opa)
    testing.add_print_output(suite, root, args.run, opa)
    code = testing.exit_code(suite, args.exit_zero_on_skipped)
    problems: list[str] = []
    summary = ""
    warnings: list[str] = []
    if not args.no_engine_checks:
        problems, summary, warnings = testing.engine_checks(root, args.path, args.hash_key_file)
        if problems and code == 0:
            code = 2
    report = None
    if args.coverage:
        report, why_not = testing.coverage(root, args.run, opa)
        if why_not:
            suite.notes.append(why_not)
    if args.format == "json":
        document: object = testing.as_json(suite)
        if report is not None:  # as opa test --coverage --format json: the coverage report
            document = report
        print(json.dumps(document, indent=2))
    else:
        lines = testing.pretty(suite, args.verbose)
        if report is not None:
            lines += [testing.RULE, "coverage (computed by opa):", *testing.coverage_lines(report)]
        if lines:
            print("\n".join(lines))
    err = sys.stderr if args.format == "json" else sys.stdout
    for problem in problems:
        print(f"engine check FAILED (otlp-sidecar run refuses this set): {problem}", file=err)
    if summary and (args.verbose or warnings):
        # what the set does not do that its author may think it does: shown without -v too
        print(f"engine checks: ok ({summary})", file=err)
    for note in suite.notes:
        print(f"note: {note}", file=sys.stderr)
    return code
