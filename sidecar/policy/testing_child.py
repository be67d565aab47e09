"""Child process of ``policy test``: compile a policy directory and run its tests; print JSON.

``python -m sidecar.policy.testing_child DIR --path otlp_sidecar/main [--run REGEX]``

rego-cpp can abort the process on some policies, so the tests run here, never in the CLI
itself (as :mod:`sidecar.policy.precheck` does for the sidecar). The report is one JSON
object: ``{"errors": [{file, row, col, message}], "tests": [{file, row, package, name,
outcome, error, ns}]}``; ``outcome`` is ``pass``, ``fail``, ``error`` or ``skip``.

What regopy lacks is handled here, not in the engine:

- ``print(...)`` is not a regopy built-in: each call is replaced by ``true`` (it always
  succeeds in OPA too) with its line breaks kept, so rows stay right; the output itself comes
  from the real ``opa`` when the CLI finds one (:mod:`sidecar.policy.testing`);
- ``todo_`` rules are not evaluated and are reported as skipped, as ``opa test`` does;
- every file is parsed on its own first, so the syntax errors of every file are reported,
  not only the first file's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from typing import Any

from sidecar.policy import rego_terms
from sidecar.policy.embedded import CompiledPolicy, check_calls, regopy
from sidecar.policy.errors import DecisionError, PolicyLoadError
from sidecar.policy.loader import check_source
from sidecar.policy.rego_errors import _line_col
from sidecar.policy.source import PolicyModule, PolicySet, read_policy_dir
from sidecar.policy.testing_print import neutralize_print

_RULE_RE = re.compile(r"^((?:test|todo)_\w+)\b", re.MULTILINE)
_SEQ_ERROR_RE = re.compile(r"\(error (\d+):")
_MSG_RE = re.compile(r"\(errormsg (\d+):")
_LOCATED_RE = re.compile(r"^(?P<file>[^:\s]+\.rego)(?::(?P<row>\d+)(?::(?P<col>\d+))?)?: (?P<message>.*)$", re.S)
_LINE_RE = re.compile(r"^line (\d+): (.*)$", re.S)


def rego_errors(text: str, sources: dict[str, str]) -> list[dict[str, Any]]:
    """Every located error of a rego-cpp error dump, as ``{file, row, col, message}``."""
    found: list[dict[str, Any]] = []
    starts = list(_SEQ_ERROR_RE.finditer(text))
    for index, match in enumerate(starts):
        end = starts[index + 1].start() if index + 1 < len(starts) else len(text)
        chunk = text[match.start():end]
        location = text[match.end(): match.end() + int(match.group(1))]
        offset = re.match(r"\|(\d+)\|", text[match.end() + len(location):])
        message = next((chunk[m.end(): m.end() + int(m.group(1))] for m in _MSG_RE.finditer(chunk)), "error")
        row = col = 0
        if location in sources and offset:
            row, col = (int(n) for n in _line_col(sources[location], int(offset.group(1))).split(":"))
        entry = {"file": location, "row": row, "col": col, "message": message}
        # rego-cpp adds "this is unclosed" at the package line for every unclosed bracket
        if not (row == 1 and any(e["message"] == message and e["file"] == location for e in found)):
            found.append(entry)
    if not found:
        first = text.strip().splitlines()[0] if text.strip() else "error"
        found.append({"file": "", "row": 0, "col": 0, "message": first})
    return found


def load_error(exc: PolicyLoadError) -> dict[str, Any]:
    """A PolicyLoadError as ``{file, row, col, message}`` (row from ``line N:`` / ``file:N:M:``)."""
    text = str(exc)
    match = _LOCATED_RE.match(text)
    if match:
        message = match.group("message")
        row, col = int(match.group("row") or 0), int(match.group("col") or 0)
        line = _LINE_RE.match(message)
        if line and not row:
            row, message = int(line.group(1)), line.group(2)
        return {"file": match.group("file"), "row": row, "col": col, "message": message}
    return {"file": exc.file, "row": 0, "col": 0, "message": exc.message}


class _TestBundle(CompiledPolicy):
    """The engine's compiled policy, without requiring the decision rule (an engine check
    reports that): a set's tests run even while its ``decisions`` rule is missing."""

    def _check_decision_rules(self) -> None:
        return None


def syntax_errors(policy_set: PolicySet) -> list[dict[str, Any]]:
    """Parse each module on its own: the errors of every file, each with file:row:col."""
    errors: list[dict[str, Any]] = []
    for module in policy_set.modules:
        interpreter = regopy.Interpreter()
        interpreter.log_level = regopy.LogLevel.NONE
        try:
            interpreter.add_module(module.path, module.source)
        except regopy.RegoError as exc:
            errors += rego_errors(str(exc), {module.path: module.source})
            continue
        try:
            check_source(PolicySet(policy_set.root, (module,)))
        except PolicyLoadError as exc:
            errors.append(load_error(exc))
        try:  # the engine's own check of the built-ins it calls (the first unsupported one per file)
            check_calls(interpreter, module.path, module.source)
        except PolicyLoadError as exc:
            errors.append(load_error(exc))
    return errors


def compile_errors(policy_set: PolicySet, entrypoint: str) -> list[dict[str, Any]]:
    """Every error rego-cpp reports when the whole set is built (conflicts, type errors ...)."""
    interpreter = regopy.Interpreter()
    interpreter.log_level = regopy.LogLevel.NONE
    sources = {m.path: m.source for m in policy_set.modules}
    try:
        for module in policy_set.modules:
            interpreter.add_module(module.path, module.source)
        rego_terms.add_data(interpreter, policy_set.data)
        interpreter.build(None, [entrypoint])
    except regopy.RegoError as exc:
        return rego_errors(str(exc), sources)
    return []


def declared_tests(module: PolicyModule) -> list[tuple[str, int]]:
    """``(rule, row)`` of each ``test_`` and ``todo_`` rule of a module, first definition each."""
    seen: dict[str, int] = {}
    for match in _RULE_RE.finditer(module.source):
        seen.setdefault(match.group(1), module.source.count("\n", 0, match.start()) + 1)
    return list(seen.items())


def run(root: str, decision_path: str, run_filter: str) -> dict[str, Any]:
    """The report: load errors, or every (filtered) test's outcome."""
    try:
        original = read_policy_dir(root)
    except PolicyLoadError as exc:
        return {"errors": [load_error(exc)], "tests": []}
    modules = tuple(dataclasses.replace(m, source=neutralize_print(m.source)) for m in original.modules)
    policy_set = dataclasses.replace(original, modules=modules)
    errors = syntax_errors(policy_set)
    if errors:
        return {"errors": errors, "tests": []}
    try:
        compiled = _TestBundle(policy_set, decision_path)
    except PolicyLoadError as exc:
        every = compile_errors(policy_set, f"{decision_path.strip('/')}/decisions")
        return {"errors": every if every and every[0]["file"] else [load_error(exc)], "tests": []}
    wanted = re.compile(run_filter) if run_filter else None
    tests: list[dict[str, Any]] = []
    for module in policy_set.modules:
        if not module.is_test:
            continue
        for rule, row in declared_tests(module):
            name = f"data.{module.package}.{rule}"
            if wanted is not None and not wanted.search(name):
                continue
            entry = {"file": module.path, "row": row, "package": f"data.{module.package}", "name": rule,
                     "outcome": "skip", "error": "", "ns": 0}
            if rule.startswith("test_"):
                started = time.perf_counter_ns()
                try:
                    value = compiled._run(f"{module.package.replace('.', '/')}/{rule}", {})
                    entry["outcome"] = "pass" if value is True else "fail"
                except DecisionError as exc:
                    entry["outcome"], entry["error"] = "error", str(exc)
                entry["ns"] = time.perf_counter_ns() - started
            tests.append(entry)
    elsewhere = [f"{m.path}:{row} {rule}" for m in policy_set.modules if not m.is_test
                 for rule, row in declared_tests(m)]
    notes = [f"test rules outside _test.rego files are not run (the sidecar runs those of _test.rego "
             f"files; opa test runs every file's): {', '.join(elsewhere)}"] if elsewhere else []
    return {"errors": [], "tests": tests, "notes": notes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sidecar.policy.testing_child")
    parser.add_argument("dir")
    parser.add_argument("--path", default="otlp_sidecar/main")
    parser.add_argument("--run", default="")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.dir, args.path, args.run)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
