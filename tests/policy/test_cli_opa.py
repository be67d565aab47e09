"""``policy test`` / ``policy eval`` against the real ``opa`` binary (v1.22.4, built by ``make peers``).

Each test runs both CLIs as a Rego author would, on the same files, and compares what the
author sees: exit codes, pass / fail / skip counts, the JSON keys, print() output, coverage.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.peers import peer
from tests.policy.conftest import REPO

POLICY = """package authz

allowed(request) if request.role == "admin"

allowed(request) if {
\trequest.role == "viewer"
\trequest.method == "GET"
}
"""
TESTS = """package authz_test

import data.authz

test_admin_allowed if authz.allowed({"role": "admin"})

test_viewer_may_get if authz.allowed({"role": "viewer", "method": "GET"})

test_viewer_may_post if {
\tprint("viewer posting, method", "POST")
\tauthz.allowed({"role": "viewer", "method": "POST"})
}

todo_test_auditor if false
"""


def sidecar(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("SIDECAR_POLICY_DIR", None)
    return subprocess.run([sys.executable, "-m", "sidecar", "policy", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120, check=False)


def opa(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(peer("opa")), *args], capture_output=True, text=True, cwd=cwd, timeout=120,
                          check=False)


@pytest.fixture
def authz(tmp_path: Path) -> Path:
    folder = tmp_path / "authz"
    folder.mkdir()
    (folder / "authz.rego").write_text(POLICY)
    (folder / "authz_test.rego").write_text(TESTS)
    return folder


def counts(stdout: str) -> dict[str, str]:
    """The summary lines (after the rule when tests are listed): {"PASS": "2/4", ...}."""
    lines = stdout.splitlines()
    rule = lines.index("-" * 80) if "-" * 80 in lines else -1
    return dict(line.split(": ", 1) for line in lines[rule + 1:] if line.split(":")[0] in
                ("PASS", "FAIL", "ERROR", "SKIPPED"))


def test_failures_and_todo_tests_as_opa_reports_them(authz: Path) -> None:
    theirs = opa("test", "authz", cwd=authz.parent)
    ours = sidecar("test", "authz", "--no-engine-checks", "--opa", str(peer("opa")), cwd=authz.parent)
    assert theirs.returncode == ours.returncode == 2
    assert counts(ours.stdout) == counts(theirs.stdout) == {"PASS": "2/4", "FAIL": "1/4", "SKIPPED": "1/4"}
    for expected in ("authz/authz_test.rego:9:", "authz/authz_test.rego:14:",
                     "data.authz_test.todo_test_auditor: SKIPPED",
                     "  viewer posting, method POST"):  # print() output under the failing test
        assert expected in theirs.stdout.splitlines()
        assert expected in ours.stdout.splitlines()
    assert "data.authz_test.test_viewer_may_post: FAIL (" in ours.stdout


def test_exit_codes_match_opa(authz: Path) -> None:
    def both(*args: str) -> tuple[int, int]:
        extra = ["--no-engine-checks"]
        return (sidecar("test", *args, *extra, cwd=authz.parent).returncode,
                opa("test", *args, cwd=authz.parent).returncode)

    assert both("authz", "--run", "admin|viewer_may_get") == (0, 0)  # all selected pass
    assert both("authz", "--run", "nothing matches") == (0, 0)  # no test run
    assert both("authz", "--run", "auditor") == (2, 2)  # only a skipped test
    assert both("authz", "--run", "auditor", "-z") == (0, 0)  # --exit-zero-on-skipped
    (authz / "broken.rego").write_text("package broken\n\nx := [\n")
    assert both("authz") == (1, 1)  # a file that does not parse
    assert both(str(authz.parent / "missing")) == (1, 1)


def test_run_selects_the_same_tests(authz: Path) -> None:
    ours = sidecar("test", "authz", "--run", "viewer", "-v", "--no-engine-checks", cwd=authz.parent)
    theirs = opa("test", "authz", "--run", "viewer", "-v", cwd=authz.parent)
    assert counts(ours.stdout) == counts(theirs.stdout) == {"PASS": "1/2", "FAIL": "1/2"}
    assert "data.authz_test.test_viewer_may_get: PASS (" in ours.stdout
    anchored = r"^data\.authz_test\.test_admin_allowed$"  # OPA matches data.<package>.<rule>
    ours = sidecar("test", "authz", "--run", anchored, "--no-engine-checks", cwd=authz.parent)
    theirs = opa("test", "authz", "--run", anchored, cwd=authz.parent)
    assert ours.stdout == theirs.stdout == "PASS: 1/1\n"  # all pass: the counts only, no rule
    assert sidecar("test", "authz", "--run", "^test_admin", "--no-engine-checks", cwd=authz.parent).stdout == ""
    assert opa("test", "authz", "--run", "^test_admin", cwd=authz.parent).stdout == ""


def test_json_output_has_opas_shape(authz: Path) -> None:
    ours = sidecar("test", "authz", "--format", "json", "--no-engine-checks", "--opa", str(peer("opa")),
                   cwd=authz.parent)
    theirs = opa("test", "authz", "--format", "json", cwd=authz.parent)
    assert ours.returncode == theirs.returncode == 2

    def by_name(stdout: str) -> dict[str, dict[str, object]]:
        return {f"{e['package']}.{e['name']}": e for e in json.loads(stdout)}

    mine, opas = by_name(ours.stdout), by_name(theirs.stdout)
    assert mine.keys() == opas.keys()
    for name, entry in opas.items():
        assert set(mine[name]) == set(entry), name  # fail / skip / output exactly where opa has them
        assert mine[name]["location"]["file"] == entry["location"]["file"]  # type: ignore[index]
        assert mine[name]["location"]["row"] == entry["location"]["row"]  # type: ignore[index]
    post = "data.authz_test.test_viewer_may_post"
    assert mine[post]["output"] == opas[post]["output"]


def test_every_syntax_error_with_file_and_line(authz: Path) -> None:
    (authz / "one.rego").write_text("package one\n\nx := [\n")
    (authz / "two.rego").write_text("package two\n\n\ny := {\n")
    ours = sidecar("test", "authz", cwd=authz.parent)
    theirs = opa("test", "authz", cwd=authz.parent)
    assert ours.returncode == theirs.returncode == 1
    for stderr in (ours.stderr, theirs.stderr):
        assert any(line.startswith("authz/one.rego:") for line in stderr.splitlines())
        assert any(line.startswith("authz/two.rego:") for line in stderr.splitlines())
    assert ours.stderr.splitlines()[0] == "2 errors occurred during loading:"
    assert "Traceback" not in ours.stderr


def test_coverage_per_file_from_opa(authz: Path) -> None:
    (authz / "authz_test.rego").write_text(TESTS.replace("test_viewer_may_post", "todo_viewer_may_post"))
    ours = sidecar("test", "authz", "--coverage", "-z", "--no-engine-checks", "--opa", str(peer("opa")),
                   cwd=authz.parent)
    assert ours.returncode == 0, ours.stdout + ours.stderr
    assert "coverage (computed by opa):" in ours.stdout
    line = next(x for x in ours.stdout.splitlines() if x.startswith("authz/authz.rego: "))
    assert "lines covered" in line
    as_json = sidecar("test", "authz", "--coverage", "-z", "--format", "json", "--no-engine-checks",
                      "--opa", str(peer("opa")), cwd=authz.parent)
    report = json.loads(as_json.stdout)
    assert set(report["files"]) == {"authz/authz.rego", "authz/authz_test.rego"}
    assert {"covered_lines", "coverage"} <= set(report)


def test_coverage_without_opa_says_so(authz: Path) -> None:
    env_path = os.environ.get("PATH", "")
    done = subprocess.run(
        [sys.executable, "-m", "sidecar", "policy", "test", "authz", "--coverage", "--no-engine-checks"],
        capture_output=True, text=True, cwd=authz.parent, timeout=120, check=False,
        env={**os.environ, "PYTHONPATH": str(REPO), "PATH": "/nonexistent", "OPA": ""},
    )
    assert env_path  # (PATH was set for the test process itself)
    assert done.returncode == 2
    assert "note: coverage needs the opa binary" in done.stderr
    assert "note: print() output needs the opa binary" in done.stderr


def test_eval_matches_opa_eval(authz: Path) -> None:
    request = authz.parent / "input.json"
    request.write_text(json.dumps({"role": "viewer", "method": "GET"}))
    query = "data.authz.allowed(input)"
    ours = sidecar("eval", query, "-d", "authz", "-i", str(request), cwd=authz.parent)
    theirs = opa("eval", query, "-d", "authz", "-i", str(request), cwd=authz.parent)
    assert ours.returncode == theirs.returncode == 0
    mine, opas = json.loads(ours.stdout), json.loads(theirs.stdout)
    assert mine["result"][0]["expressions"][0]["value"] == opas["result"][0]["expressions"][0]["value"] is True
    assert mine["result"][0]["expressions"][0]["text"] == query
    undefined = sidecar("eval", "data.authz.nothing", "-d", "authz", cwd=authz.parent)
    assert undefined.returncode == opa("eval", "data.authz.nothing", "-d", "authz", cwd=authz.parent).returncode == 0
    assert json.loads(undefined.stdout) == {}
    assert sidecar("eval", "data.authz.nothing", "-d", "authz", "--fail", cwd=authz.parent).returncode == 1
    assert opa("eval", "data.authz.nothing", "-d", "authz", "--fail", cwd=authz.parent).returncode == 1
    raw = sidecar("eval", "x := 40 + 2", "-d", "authz", "--format", "raw", cwd=authz.parent)
    assert raw.stdout.strip() == "true"  # opa eval --format raw prints the expression's value too
    bound = json.loads(sidecar("eval", "x := 40 + 2", "-d", "authz", cwd=authz.parent).stdout)
    assert bound["result"][0]["bindings"] == {"x": 42}
    bad = sidecar("eval", "data.authz.allowed(", "-d", "authz", cwd=authz.parent)
    assert bad.returncode == 2 == opa("eval", "data.authz.allowed(", "-d", "authz", cwd=authz.parent).returncode
    assert "errors" in json.loads(bad.stdout) and "Traceback" not in bad.stderr


def test_eval_takes_a_file_or_a_missing_path_as_opa(authz: Path) -> None:
    query = 'data.authz.allowed({"role": "admin"})'
    ours = sidecar("eval", query, "-d", "authz/authz.rego", "--format", "raw", cwd=authz.parent)
    theirs = opa("eval", query, "-d", "authz/authz.rego", "--format", "raw", cwd=authz.parent)
    assert ours.returncode == theirs.returncode == 0
    assert ours.stdout.strip() == theirs.stdout.strip() == "true"
    (authz.parent / "limits.json").write_text('{"limits": {"max": 7}}')
    ours = sidecar("eval", "data.limits.max", "-d", "limits.json", "--format", "raw", cwd=authz.parent)
    theirs = opa("eval", "data.limits.max", "-d", "limits.json", "--format", "raw", cwd=authz.parent)
    assert ours.stdout.strip() == theirs.stdout.strip() == "7"
    ours = sidecar("eval", "data.authz", "-d", "missing", cwd=authz.parent)
    theirs = opa("eval", "data.authz", "-d", "missing", cwd=authz.parent)
    assert ours.returncode == theirs.returncode == 2
    assert json.loads(ours.stdout)["errors"] and json.loads(theirs.stdout)["errors"]


def test_an_evaluation_error_is_error_in_both(tmp_path: Path) -> None:
    folder = tmp_path / "conflict"
    folder.mkdir()
    (folder / "conflict_test.rego").write_text(
        "package conflict_test\n\nf(x) := 1 if x > 0\n\nf(x) := 2 if x > 1\n\ntest_conflict if f(5) == 1\n"
    )
    ours = sidecar("test", "conflict", "--no-engine-checks", cwd=tmp_path)
    theirs = opa("test", "conflict", cwd=tmp_path)
    assert ours.returncode == theirs.returncode == 2
    assert counts(ours.stdout) == counts(theirs.stdout) == {"ERROR": "1/1"}
    assert "data.conflict_test.test_conflict: ERROR (" in ours.stdout
    mine = json.loads(sidecar("test", "conflict", "--format", "json", "--no-engine-checks", cwd=tmp_path).stdout)
    opas = json.loads(opa("test", "conflict", "--format", "json", cwd=tmp_path).stdout)
    assert set(mine[0]) == set(opas[0]) and {"code", "message"} <= set(mine[0]["error"])
