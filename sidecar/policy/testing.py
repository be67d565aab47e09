"""``policy test``: run a set's Rego tests the way ``opa test`` does, plus the engine's own checks.

The tests run in a child process (:mod:`sidecar.policy.testing_child`) on the embedded
engine (regopy), so a crash of the engine cannot take the CLI down. What regopy cannot give,
the real ``opa`` binary gives when one is found (``--opa``, ``$OPA``, ``opa`` on ``PATH``):
``print()`` output of failing tests and coverage. Without it the CLI says what is missing.

Outcomes, output and exit codes follow ``opa test`` v1.22.4 (checked against the binary):
0 when every test passes (or none ran), 2 when one fails, errors or is skipped (``todo_``;
``--exit-zero-on-skipped`` as in OPA), 1 when the set does not load. The engine checks
(:func:`engine_checks`: the decisions' vocabulary and the PCI probe, as ``run`` applies
them) add 2 when they refuse a set that loads.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

RULE = "-" * 80
CHILD_TIMEOUT = 120.0
OPA_TIMEOUT = 120.0


@dataclass(frozen=True)
class TestCase:
    """One test rule and its outcome (``pass``, ``fail``, ``error``, ``skip``)."""

    file: str
    row: int
    package: str  # data.<package>
    name: str
    outcome: str
    error: str = ""
    ns: int = 0
    output: str = ""

    @property
    def full_name(self) -> str:
        return f"{self.package}.{self.name}"


@dataclass
class Suite:
    """What a run found: load errors (file:row), test cases, notes on what could not be done."""

    errors: list[dict[str, Any]] = field(default_factory=list)
    tests: list[TestCase] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def count(self, outcome: str) -> int:
        return sum(t.outcome == outcome for t in self.tests)


def find_opa(explicit: str | None = None) -> str | None:
    """The ``opa`` binary: ``explicit``, else ``$OPA``, else ``opa`` on PATH; None when absent."""
    for candidate in (explicit, os.environ.get("OPA"), shutil.which("opa")):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def run_tests(root: str, decision_path: str, run_filter: str) -> Suite:
    """Run the set's tests in a child process; file names are shown as ``root``/file."""
    command = [sys.executable, "-m", "sidecar.policy.testing_child", root, "--path", decision_path]
    if run_filter:
        command += ["--run", run_filter]
    try:
        child = subprocess.run(command, capture_output=True, text=True, timeout=CHILD_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        return Suite(errors=[_error(f"the tests took longer than {CHILD_TIMEOUT:.0f} s")])
    if child.returncode < 0:
        return Suite(errors=[_error(f"the embedded engine (regopy) crashed on this set (signal {-child.returncode})")])
    try:
        report = json.loads(child.stdout)
    except json.JSONDecodeError:
        detail = (child.stderr.strip().splitlines() or ["no output"])[-1]
        return Suite(errors=[_error(f"the test run failed: {detail}")])
    shown = root.rstrip("/") or root

    def where(rel: str) -> str:
        return os.path.join(shown, rel) if rel else ""

    errors = [{**e, "file": where(e["file"])} for e in report["errors"]]
    tests = [
        TestCase(where(t["file"]), t["row"], t["package"], t["name"], t["outcome"], t["error"], t["ns"])
        for t in report["tests"]
    ]
    return Suite(errors=errors, tests=tests, notes=list(report.get("notes", [])))


def _error(message: str) -> dict[str, Any]:
    return {"file": "", "row": 0, "col": 0, "message": message}


def add_print_output(suite: Suite, root: str, run_filter: str, opa: str | None) -> None:
    """Attach ``print()`` output to failing tests, from the real ``opa`` (regopy has no print)."""
    failing = [t for t in suite.tests if t.outcome in ("fail", "error")]
    if not failing or not _uses_print(root):
        return
    if opa is None:
        suite.notes.append("print() output needs the opa binary (--opa, $OPA or PATH): the embedded "
                           "engine (regopy) has no print built-in; print calls were evaluated as true")
        return
    names = "|".join(re.escape(t.full_name) for t in failing)
    command = [opa, "test", "--format", "json", "--run", f"^({names})$", root]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=OPA_TIMEOUT, check=False)
        results = json.loads(done.stdout)
    except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError):
        suite.notes.append("print() output: opa could not run the tests of this set")
        return
    outputs = {f"{r.get('package')}.{r.get('name')}": r.get("output", "") for r in results}
    for index, test in enumerate(suite.tests):
        encoded = outputs.get(test.full_name)
        if encoded:
            text = base64.b64decode(encoded).decode("utf-8", errors="replace")
            suite.tests[index] = TestCase(**{**test.__dict__, "output": text})


def _uses_print(root: str) -> bool:
    pattern = re.compile(r"(?<![\w.])print\s*\(")
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.endswith(".rego") and not name.startswith("."):
                with open(os.path.join(dirpath, name), encoding="utf-8", errors="replace") as handle:
                    if pattern.search(handle.read()):
                        return True
    return False


def coverage(root: str, run_filter: str, opa: str | None) -> tuple[dict[str, Any] | None, str]:
    """OPA's coverage report of the set's tests (``opa test --coverage``), or (None, why not).

    regopy gives no coverage; the real ``opa`` computes it on the same files.
    """
    if opa is None:
        return None, ("coverage needs the opa binary (--opa, $OPA or PATH): the embedded engine "
                      "(regopy) does not report which expressions ran")
    command = [opa, "test", "--coverage", "--format", "json", root]
    if run_filter:
        command[2:2] = ["--run", run_filter]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=OPA_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"coverage: opa did not run: {exc}"
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        return None, "coverage: opa reports coverage only when its own run of the tests passes"
    return report, ""


def coverage_lines(report: dict[str, Any]) -> list[str]:
    """Per file: covered / not covered line counts, the percentage and the lines not covered."""
    lines: list[str] = []
    for name, entry in sorted(report.get("files", {}).items()):
        missed = sorted({row for r in entry.get("not_covered", [])
                         for row in range(r["start"]["row"], r["end"]["row"] + 1)})
        text = (f"{name}: {entry.get('coverage', 0):.1f}% ({entry.get('covered_lines', 0)} lines covered, "
                f"{entry.get('not_covered_lines', 0)} not covered)")
        if missed:
            text += " not covered: " + _ranges(missed)
        lines.append(text)
    lines.append(f"total: {report.get('coverage', 0):.1f}% ({report.get('covered_lines', 0)} lines covered, "
                 f"{report.get('not_covered_lines', 0)} not covered)")
    return lines


def _ranges(rows: list[int]) -> str:
    parts: list[str] = []
    start = prev = rows[0]
    for row in [*rows[1:], None]:
        if row is not None and row == prev + 1:
            prev = row
            continue
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
        if row is not None:
            start = prev = row
    return ", ".join(parts)


def engine_checks(root: str, decision_path: str, hash_key_file: str) -> tuple[list[str], str, list[str]]:
    """What ``run`` checks before a set goes live, by the same code: (problems, summary,
    warnings). A warning is something the set does not do that it seems to (a keep rule no
    exemption allows, an exemption a key rule wins over); it is in the summary too.

    A :class:`~sidecar.policy.service.PolicyService` is started on ``root`` as ``run`` starts
    it (tests not run again): the decision rule, the decisions of every signal and transport
    against the engine's vocabulary, the exemptions, and the PCI probe through the rewriter.
    """
    import prometheus_client

    from sidecar.configkit import ConfigError, load_section
    from sidecar.identity import PodConfig
    from sidecar.policy.config import PolicyConfig
    from sidecar.policy.service import PolicyService

    config = PolicyConfig(
        dir=root, opa_path=decision_path, hash_key_file=hash_key_file, reload_interval=0.0,
        run_tests_on_load=False,
    )
    pod = load_section(PodConfig, "pod", None, os.environ).identity()
    service = PolicyService(config, pod, prometheus_client.CollectorRegistry())
    quiet = logging.getLogger("sidecar.policy")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the random-key warning and the "live" line are run's, not ours

    async def check() -> dict[str, Any]:
        try:
            await service.start()
            return service.status()
        finally:
            await service.stop()

    try:
        status = asyncio.run(check())
    except ConfigError as exc:
        return [str(exc).removeprefix("policy.dir: ")], "", []
    finally:
        quiet.setLevel(level)
    probe = status.get("pci_probe", {})
    summary = f"PCI probe: {probe.get('cards_planted', 0)} card numbers planted, none left unmasked"
    warnings = []
    ignored = probe.get("ignored_keep_rules") or []
    if ignored:
        warnings.append(f"keep rules ignored (no exemption names their key): {', '.join(ignored)}")
    overridden = probe.get("overridden_exemptions") or []
    if overridden:
        warnings.append(f"exemptions without effect: {'; '.join(overridden)}")
    return [], "; ".join([summary, *warnings]), warnings


# ------------------------------------------------------------------------- output


def _duration(ns: int) -> str:
    """``ns`` as Go prints a time.Duration (``400.481µs``, ``2.721705ms``), as ``opa test`` shows it."""
    for unit, size, digits in (("s", 1_000_000_000, 9), ("ms", 1_000_000, 6), ("µs", 1000, 3)):
        if ns >= size:
            return f"{ns / size:.{digits}f}".rstrip("0").rstrip(".") + unit
    return f"{ns}ns"


_VERDICT = {"pass": "PASS", "fail": "FAIL", "error": "ERROR", "skip": "SKIPPED"}


def pretty(suite: Suite, verbose: bool) -> list[str]:
    """``opa test`` pretty output: non-passing tests (every test with ``verbose``), then counts."""
    lines: list[str] = []
    for test in suite.tests:
        if test.outcome == "pass" and not verbose:
            continue
        lines.append(f"{test.file}:{test.row}:")
        verdict = _VERDICT[test.outcome]
        lines.append(f"{test.full_name}: {verdict}" + ("" if test.outcome == "skip" else f" ({_duration(test.ns)})"))
        if test.error:
            lines.append(f"  {test.error}")
        if test.output:
            lines.append("")
            lines += [f"  {line}" for line in test.output.rstrip("\n").splitlines()]
            lines.append("")
    if not suite.tests:
        return lines
    if lines:  # as opa test: the rule only under listed tests
        lines.append(RULE)
    total = len(suite.tests)
    for outcome in ("pass", "fail", "error", "skip"):
        number = suite.count(outcome)
        if number:
            lines.append(f"{_VERDICT[outcome]}: {number}/{total}")
    return lines


def as_json(suite: Suite) -> list[dict[str, Any]]:
    """``opa test --format json``: one object per test, with OPA's keys."""
    entries: list[dict[str, Any]] = []
    for test in suite.tests:
        entry: dict[str, Any] = {
            "location": {"file": test.file, "row": test.row, "col": 1},
            "package": test.package, "name": test.name,
        }
        if test.outcome == "fail":
            entry["fail"] = True
        elif test.outcome == "skip":
            entry["skip"] = True
        elif test.outcome == "error":
            entry["error"] = {"code": "eval_error", "message": test.error}
        entry["duration"] = test.ns
        if test.output:
            entry["output"] = base64.b64encode(test.output.encode()).decode()
        entries.append(entry)
    return entries


def load_error_lines(errors: list[dict[str, Any]]) -> list[str]:
    """``N errors occurred during loading:`` and each error as ``file:row:col: message``."""
    count = len(errors)
    lines = [f"{count} error{'s' if count != 1 else ''} occurred during loading:"]
    for error in errors:
        where = error["file"]
        if where and error.get("row"):
            where += f":{error['row']}" + (f":{error['col']}" if error.get("col") else "")
        lines.append(f"{where}: {error['message']}" if where else error["message"])
    return lines


def exit_code(suite: Suite, exit_zero_on_skipped: bool) -> int:
    """0, or 2 when a test fails, errors, or is skipped (unless told), as ``opa test``; 1 when not loaded."""
    if suite.errors:
        return 1
    bad = suite.count("fail") + suite.count("error") + (0 if exit_zero_on_skipped else suite.count("skip"))
    return 2 if bad else 0
