"""Child process: compile a policy directory and run its tests; print a JSON report.

``python -m sidecar.policy.precheck DIR --path otlp_sidecar/main [--tests]``.
Used by :mod:`sidecar.policy.loader` so that an engine crash cannot take the
sidecar down.
"""

from __future__ import annotations

import argparse
import json
import sys

from sidecar.policy.errors import PolicyLoadError
from sidecar.policy.loader import compile_checked, results_as_json
from sidecar.policy.source import read_policy_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sidecar.policy.precheck")
    parser.add_argument("dir")
    parser.add_argument("--path", default="otlp_sidecar/main")
    parser.add_argument("--tests", action="store_true")
    parser.add_argument(
        "--no-source-check", action="store_true",
        help="compile even constructs known to crash the engine (to see the crash)",
    )
    args = parser.parse_args(argv)
    try:
        compiled = compile_checked(
            read_policy_dir(args.dir), args.path, source_check=not args.no_source_check
        )
        results = compiled.run_tests() if args.tests else []
    except PolicyLoadError as exc:
        print(json.dumps({"error": str(exc)}))
        return 0
    print(json.dumps({"tests": results_as_json(results)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
