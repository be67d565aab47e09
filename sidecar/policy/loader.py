"""Load a policy directory into a compiled policy, safely.

rego-cpp (under regopy) can abort the whole process on some policies instead
of raising an error. A new policy set is therefore first compiled, and its
``_test.rego`` tests run, in a child process (``python -m sidecar.policy.precheck``);
only a set that survives there and passes is compiled in the sidecar itself. A
crash in the child refuses the set; the running sidecar and its last good set
are untouched.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import asdict

from sidecar.policy.embedded import CompiledPolicy, TestResult
from sidecar.policy.errors import PolicyLoadError
from sidecar.policy.source import PolicySet, read_policy_dir

_WITH_INPUT_RE = re.compile(r"\bwith\s+input(?:\.[\w.]+)?\s+as\b")
_COMMENT_RE = re.compile(r"#.*$", re.MULTILINE)
PRECHECK_TIMEOUT = 120.0


def check_source(policy_set: PolicySet) -> None:
    """Refuse constructs known to crash the embedded engine, naming file and line."""
    for module in policy_set.modules:
        code = _COMMENT_RE.sub("", module.source)
        match = _WITH_INPUT_RE.search(code)
        if match:
            number = code.count("\n", 0, match.start()) + 1
            raise PolicyLoadError(
                f"line {number}: `with input as` is not supported by the embedded engine "
                "(regopy 1.5 crashes on it); write rules as functions of the request "
                "(decision_for(request)) and call them with a request in tests",
                module.path,
            )


def compile_checked(
    policy_set: PolicySet, decision_path: str, *, source_check: bool = True,
) -> CompiledPolicy:
    """Compile in this process (after :func:`check_source`, unless told not to)."""
    if source_check:
        check_source(policy_set)
    return CompiledPolicy(policy_set, decision_path)


def failed_tests(results: list[TestResult]) -> list[TestResult]:
    return [r for r in results if not r.passed]


def precheck(
    root: str, decision_path: str, run_tests: bool, *, source_check: bool = True,
) -> list[TestResult]:
    """Compile ``root`` (and run its tests) in a child process; return the test results.

    Raises PolicyLoadError when the set does not load, or the engine crashes on it.
    """
    command = [sys.executable, "-m", "sidecar.policy.precheck", root, "--path", decision_path]
    if run_tests:
        command.append("--tests")
    if not source_check:
        command.append("--no-source-check")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_package_root(), env.get("PYTHONPATH", "")) if p)
    try:
        child = subprocess.run(
            command, capture_output=True, text=True, timeout=PRECHECK_TIMEOUT, env=env, check=False,
        )
    except subprocess.TimeoutExpired:
        raise PolicyLoadError(
            f"compiling and testing the policy set took longer than {PRECHECK_TIMEOUT:.0f} s"
        ) from None
    if child.returncode < 0:
        name = signal.Signals(-child.returncode).name
        detail = (child.stderr.strip().splitlines() or [""])[-1]
        raise PolicyLoadError(
            f"the embedded engine (regopy) crashed on this policy set ({name}"
            + (f": {detail}" if detail else "") + "); the set is refused"
        )
    try:
        report = json.loads(child.stdout)
    except json.JSONDecodeError:
        detail = (child.stderr.strip().splitlines() or ["no output"])[-1]
        raise PolicyLoadError(f"the policy check failed: {detail}") from None
    if report.get("error"):
        raise PolicyLoadError(report["error"])
    return [TestResult(**entry) for entry in report.get("tests", [])]


def _package_root() -> str:
    import sidecar

    return os.path.dirname(os.path.dirname(os.path.abspath(sidecar.__file__)))


def load_policy(
    root: str, decision_path: str, *, run_tests: bool, isolate: bool = True,
) -> tuple[CompiledPolicy, list[TestResult]]:
    """Read, check, compile and test ``root``; raise PolicyLoadError when it cannot go live."""
    policy_set = read_policy_dir(root)
    check_source(policy_set)
    if isolate:
        results = precheck(root, decision_path, run_tests)
        # the tests ran in the child: the serving bundle leaves them out (smaller, faster queries)
        compiled = CompiledPolicy(policy_set, decision_path, with_tests=False)
    else:
        compiled = CompiledPolicy(policy_set, decision_path)
        results = compiled.run_tests() if run_tests else []
    failures = failed_tests(results)
    if failures:
        names = ", ".join(f.name for f in failures[:5])
        more = f" and {len(failures) - 5} more" if len(failures) > 5 else ""
        raise PolicyLoadError(f"{len(failures)} of {len(results)} policy tests fail: {names}{more}")
    return compiled, results


def results_as_json(results: list[TestResult]) -> list[dict[str, object]]:
    return [asdict(r) for r in results]
