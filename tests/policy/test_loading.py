"""Broken policy sets are refused with an error naming the file and line (real regopy)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sidecar.policy.errors import PolicyLoadError
from sidecar.policy.loader import load_policy, precheck

PATH = "otlp_sidecar/main"


def load(policy_dir: Path, *, isolate: bool = False):
    return load_policy(str(policy_dir), PATH, run_tests=True, isolate=isolate)


def test_syntax_error_names_file_line_and_column(policy_dir: Path) -> None:
    pci = policy_dir / "pci" / "pci.rego"
    pci.write_text(pci.read_text() + "\nbroken := 1 +\n")
    with pytest.raises(PolicyLoadError) as caught:
        load(policy_dir)
    line = len(pci.read_text().splitlines())
    assert str(caught.value).startswith(f"pci/pci.rego:{line}:")


def test_failing_policy_test_refuses_the_set(policy_dir: Path) -> None:
    data_file = policy_dir / "data.json"
    data = json.loads(data_file.read_text())
    data["otlp_sidecar"]["config"]["sampling"]["ratio"] = 1.5  # not a probability: the tests say so
    data_file.write_text(json.dumps(data))
    with pytest.raises(PolicyLoadError) as caught:
        load(policy_dir)
    assert "policy tests fail" in str(caught.value)
    assert "data.otlp_sidecar.sampling_test.test_ratio_of_the_data_is_a_probability" in str(caught.value)


def test_builtin_the_embedded_engine_lacks_is_named(policy_dir: Path) -> None:
    (policy_dir / "extra.rego").write_text(
        "package otlp_sidecar.extra\n\nimport rego.v1\n\n"
        'peer_ok if net.cidr_contains("10.0.0.0/8", input.peer.address)\n'
    )
    with pytest.raises(PolicyLoadError) as caught:
        load(policy_dir)
    message = str(caught.value)
    assert message.startswith("extra.rego: line 5: net.cidr_contains() is not a built-in")
    assert "http.send" in message


def test_with_input_is_refused_before_it_can_crash_the_engine(policy_dir: Path) -> None:
    (policy_dir / "extra_test.rego").write_text(
        "package otlp_sidecar.extra_test\n\nimport rego.v1\n\nimport data.otlp_sidecar.pci\n\n"
        "test_x if {\n\tpci.decision\n\t\twith input as {}\n}\n"
    )
    with pytest.raises(PolicyLoadError) as caught:
        load(policy_dir)
    assert str(caught.value).startswith("extra_test.rego: line 9: `with input as` is not supported")


def test_engine_crash_happens_in_the_child_not_here(policy_dir: Path) -> None:
    # regopy 1.5 aborts the process on `with input as` when the rule refers to other rules;
    # the child process compiles without the source check, crashes, and the set is refused.
    (policy_dir / "extra_test.rego").write_text(
        "package otlp_sidecar.extra_test\n\nimport rego.v1\n\nimport data.otlp_sidecar.tenant\n\n"
        'req := {"signal": "traces"}\n\ntest_x if {\n\ttenant.settings with input as req\n}\n'
    )
    with pytest.raises(PolicyLoadError) as caught:
        precheck(str(policy_dir), PATH, True, source_check=False)
    assert "crashed on this policy set" in str(caught.value)


def test_missing_decision_package(tmp_path: Path) -> None:
    (tmp_path / "only.rego").write_text("package otlp_sidecar.only\n\nimport rego.v1\n\nx := 1\n")
    with pytest.raises(PolicyLoadError) as caught:
        load(tmp_path)
    assert "no package otlp_sidecar.main with a `decisions` rule" in str(caught.value)


def test_bad_data_json_names_the_file(policy_dir: Path) -> None:
    (policy_dir / "data.json").write_text('{"otlp_sidecar": ')
    with pytest.raises(PolicyLoadError) as caught:
        load(policy_dir)
    assert str(caught.value).startswith("data.json: is not valid JSON")


def test_file_without_package(policy_dir: Path) -> None:
    (policy_dir / "stray.rego").write_text("x := 1\n")
    with pytest.raises(PolicyLoadError) as caught:
        load(policy_dir)
    assert str(caught.value) == "stray.rego: has no package declaration"


def test_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(PolicyLoadError) as caught:
        load(tmp_path)
    assert "holds no .rego files" in str(caught.value)


def test_isolated_load_reports_the_same_as_in_process(policy_dir: Path) -> None:
    compiled, results = load(policy_dir, isolate=True)
    assert results and all(r.passed for r in results)
    assert compiled.version == load(policy_dir)[0].version
