"""``otlp-sidecar policy test | eval | explain`` run as a user would (a real child process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.policy.conftest import HASH_KEY, POLICIES, REPO
from tests.policy.extra import add_extra_policy


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": str(REPO), "SIDECAR_TENANT": "acme", **env}
    environment.pop("SIDECAR_POLICY_DIR", None)
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "policy", *args],
        capture_output=True, text=True, env=environment, cwd=REPO, timeout=120, check=False,
    )


def test_policy_test_reports_like_opa_test() -> None:
    done = run("test", str(POLICIES), "-v")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    test_name = "data.otlp_sidecar.pci_test.test_security_codes_track_data_and_pin_blocks_are_dropped"
    at = next(i for i, line in enumerate(lines) if line.startswith(f"{test_name}: PASS ("))
    assert lines[at - 1].startswith(f"{POLICIES}/pci/pci_test.rego:") and lines[at - 1].endswith(":")
    summary = lines.index("-" * 80)
    passed, total = lines[summary + 1].removeprefix("PASS: ").split("/")
    assert passed == total and int(total) >= 30
    assert lines[summary + 2].startswith("engine checks: ok (PCI probe: ")
    quiet = run("test", str(POLICIES))  # as opa test without -v: passing tests are not listed
    assert quiet.returncode == 0 and ": PASS (" not in quiet.stdout
    assert quiet.stdout.splitlines()[-1] == f"PASS: {total}/{total}"


def test_policy_test_fails_with_exit_code_2_like_opa(policy_dir: Path) -> None:
    data_file = policy_dir / "data.json"
    data = json.loads(data_file.read_text())
    data["otlp_sidecar"]["config"]["k8s"]["stamp"] = "yes"  # not a boolean: the tests say so
    data_file.write_text(json.dumps(data))
    done = run("test", str(policy_dir), "--no-engine-checks")
    assert done.returncode == 2
    lines = done.stdout.splitlines()
    at = lines.index(next(line for line in lines if line.startswith(
        "data.otlp_sidecar.k8s_test.test_data_setting_is_a_boolean: FAIL (")))
    assert lines[at - 1].startswith(f"{policy_dir}/k8s/k8s_test.rego:")
    assert lines[-1].startswith("FAIL: 1/")
    assert ": PASS (" not in done.stdout


def test_policy_test_on_a_broken_set_exits_1_with_every_error(policy_dir: Path) -> None:
    (policy_dir / "tenant" / "tenant.rego").write_text("package otlp_sidecar.tenant\n\nx := [\n")
    (policy_dir / "k8s" / "k8s.rego").write_text("package otlp_sidecar.k8s\n\n\ny := {\n")
    done = run("test", str(policy_dir))
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert lines[0] == "2 errors occurred during loading:"
    assert f"{policy_dir}/k8s/k8s.rego:4:6: this is unclosed" in lines
    assert f"{policy_dir}/tenant/tenant.rego:3:6: this is unclosed" in lines
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_policy_test_runs_the_engine_checks_run_applies(policy_dir: Path) -> None:
    """A set whose tests pass but whose decision has an unknown action: `run` refuses it, so does test."""
    add_extra_policy(policy_dir, """
decision_for(request) := {"attributes": [{"rule_id": "extra.mask", "keys": ["secret"], "action": "mask"}]}
""")
    done = run("test", str(policy_dir))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "FAIL:" not in done.stdout  # every Rego test passes ...
    assert "engine check FAILED (otlp-sidecar run refuses this set): " in done.stdout
    assert "extra/extra.rego (package otlp_sidecar.extra): decision.attributes[0].action: unknown action 'mask'" \
        in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


def test_policy_eval_prints_decision_and_plan(tmp_path: Path) -> None:
    request = tmp_path / "input.json"
    request.write_text(json.dumps({"signal": "traces", "resource": {"service.name": "api", "tenant.id": "evil"}}))
    key = tmp_path / "key"
    key.write_bytes(HASH_KEY)
    done = run("eval", "--input", str(request), "--dir", str(POLICIES), "--hash-key-file", str(key))
    assert done.returncode == 0, done.stderr
    output = json.loads(done.stdout)
    assert output["decisions"]["otlp_sidecar.tenant"]["rule_id"] == "tenant.spoofed"
    assert output["plan"]["allow"] is False
    assert output["plan"]["sampling"]["ratio"] == 0.1
    assert "hash_key" not in output["plan"] and HASH_KEY.decode() not in done.stdout
    assert output["pod_settings"]["export_headers"] == {"X-Scope-OrgID": "acme"}
    assert output["input"]["pod"]["tenant"] == "acme"


def test_policy_eval_masks_card_numbers_unless_asked(tmp_path: Path) -> None:
    """The input and the refusal reason quote the resource: card numbers masked by default, as
    explain does (a review got them printed), escapes included (the document is masked before it
    is written as JSON, whose \\u0001 would join a number to other digits)."""
    request = tmp_path / "input.json"
    request.write_text(json.dumps({"signal": "traces", "resource": {
        "service.name": "4111111111111111", "tenant.id": "5555555555554444", "\u0001378282246310005": "x"}}))
    done = run("eval", "--input", str(request), "--dir", str(POLICIES))
    assert done.returncode == 0, done.stderr
    for number in ("4111111111111111", "5555555555554444", "378282246310005"):
        assert number not in done.stdout and number[:-4] not in done.stdout
    output = json.loads(done.stdout)
    assert output["input"]["resource"]["tenant.id"] == "************4444"
    assert "claims tenant ************4444" in json.dumps(output["decisions"])
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"resource": {"service.name": "4111111111111111"}}))
    query = run("eval", "input.resource", "--input", str(plain), "--dir", str(POLICIES))
    assert query.returncode == 0 and "4111111111111111" not in query.stdout and "************1111" in query.stdout
    shown = run("eval", "--input", str(request), "--dir", str(POLICIES), "--show-values")
    assert "5555555555554444" in shown.stdout
    # a card number written as a JSON number (an integer attribute) is masked too
    numbers = tmp_path / "numbers.json"
    numbers.write_text('{"resource": {"card": 4111111111111111, "amount": 4111111111111111.0, "port": 4317}}')
    query = run("eval", "input.resource", "--input", str(numbers), "--dir", str(POLICIES))
    assert query.returncode == 0 and "411111111111" not in query.stdout, query.stdout
    value = json.loads(query.stdout)["result"][0]["expressions"][0]["value"]
    assert value == {"card": "************1111", "amount": "************1111", "port": 4317}


def test_policy_eval_of_a_query_reads_quotes_and_control_characters(tmp_path: Path) -> None:
    """regopy wrote such strings of the input back unescaped: the query failed with "Invalid
    control character" (or printed other JSON)."""
    request = tmp_path / "input.json"
    value = 'a\u0001b "quoted" back\\slash'
    request.write_text(json.dumps({"resource": {"k": value}}))
    done = run("eval", "input.resource.k", "--input", str(request), "--dir", str(POLICIES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["result"][0]["expressions"][0]["value"] == value


def test_policy_eval_with_a_bad_input_file(tmp_path: Path) -> None:
    request = tmp_path / "input.json"
    request.write_text("{not json")
    done = run("eval", "--input", str(request), "--dir", str(POLICIES))
    assert done.returncode == 2
    assert "is not valid JSON" in done.stderr and "Traceback" not in done.stderr
    # bytes that are not UTF-8, and nesting deeper than Python reads: told, never a traceback
    # (a differential fuzz of the engines got both)
    for content, told in ((b'{"resource": {"a": "\xff\xfe"}}', "is not UTF-8"), (b"[" * 100_000, "nests too deeply")):
        request.write_bytes(content)
        for query in ((), ("input",)):
            done = run("eval", *query, "--input", str(request), "--dir", str(POLICIES))
            assert done.returncode == 2 and told in done.stderr and "Traceback" not in done.stderr, done.stderr
    # a lone surrogate, which JSON may hold, is printed back (the masker read UTF-8 only)
    request.write_text('{"resource": {"tenant.id": "\\ud800 4111111111111111"}}')
    for query in ((), ("input.resource",)):
        done = run("eval", *query, "--input", str(request), "--dir", str(POLICIES))
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        assert "4111111111111111" not in done.stdout and "************1111" in done.stdout


PAYLOAD = {"resourceSpans": [
    {"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "checkout"}}]},
     "scopeSpans": [{"spans": [
         {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "name": "pay",
          "status": {"code": 2},
          "attributes": [{"key": "card.number", "value": {"stringValue": "4111 1111 1111 1111"}},
                         {"key": "payment.card.cvv", "value": {"stringValue": "123"}}]}]}]},
    {"resource": {"attributes": [{"key": "tenant.id", "value": {"stringValue": "globex"}}]},
     "scopeSpans": [{"spans": [{"traceId": "5b8efff798038103d269b633813fc60d", "spanId": "eee19b7ec3c1b176",
                                "name": "add"}]}]},
]}


def test_policy_explain_shows_what_would_change(tmp_path: Path) -> None:
    payload = tmp_path / "capture.json"
    payload.write_text(json.dumps(PAYLOAD))
    done = run("explain", str(payload), "--dir", str(POLICIES))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "attributes['card.number']: changed to \"**** **** **** 1111\"" in out
    assert "attributes['payment.card.cvv']: dropped" in out
    assert "resource.attributes['tenant.id']: added \"acme\"" in out
    assert "resource 1:\n  refused by tenant.spoofed" in out
    assert "4111 1111 1111 1111" not in out  # values before the change only with --show-values
    shown = run("explain", str(payload), "--dir", str(POLICIES), "--show-values")
    assert "(was \"4111 1111 1111 1111\")" in shown.stdout


def test_policy_explain_rejects_a_non_otlp_file(tmp_path: Path) -> None:
    payload = tmp_path / "capture.json"
    payload.write_text('{"hello": 1}')
    done = run("explain", str(payload), "--dir", str(POLICIES))
    assert done.returncode == 2
    assert "no resourceSpans, resourceMetrics or resourceLogs" in done.stderr


def test_policy_explain_never_prints_a_card_number_without_show_values(tmp_path: Path) -> None:
    """Issue 15, item 5: every location label carried the span's original name."""
    visa, amex, mastercard = "4111 1111 1111 1111", "378282246310005", "5555-5555-5555-4444"
    spans = [
        {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": f"eee19b7ec3c1b1{n:02x}",
         "name": f"charge {visa}", "status": {"code": 2 if n == 0 else 0},
         "attributes": [{"key": "note", "value": {"stringValue": f"card {mastercard}"}},
                        {"key": "payment.card.cvv", "value": {"stringValue": "123"}}]}
        for n in range(12)  # every span but the error is sampled out at 10 % by this trace id
    ]
    payload = {"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": f"shop {amex}"}}]},
        "scopeSpans": [{"spans": spans}],
    }]}
    capture = tmp_path / "capture.json"
    capture.write_text(json.dumps(payload))
    done = run("explain", str(capture), "--dir", str(POLICIES))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "sampled out" in out and "attributes['payment.card.cvv']: dropped" in out
    for number in (visa, amex, mastercard, "4111111111111111", "5555555555554444"):
        assert number not in out
    assert "'charge **** **** **** 1111'" in out  # named as the upstream would see it
    assert "(service.name 'shop ***********0005')" in out
    shown = run("explain", str(capture), "--dir", str(POLICIES), "--show-values")
    assert shown.returncode == 0, shown.stderr
    assert f"'charge {visa}'" in shown.stdout and f"service.name 'shop {amex}'" in shown.stdout


def test_policy_explain_masks_keys_holding_card_numbers_before_escaping_them(tmp_path: Path) -> None:
    """A key's escapes (repr turns a control character into \\x01, U+2028 into \\u2028) joined a
    card number to other digits where the masker of the printed lines could not see it: a review
    got both numbers printed without --show-values."""
    keys = ["\u00014111111111111111", "\u20285555555555554444", "plain"]
    payload = {"resourceSpans": [{"scopeSpans": [{"spans": [{
        "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "name": "pay",
        "status": {"code": 2},
        "attributes": [{"key": key, "value": {"stringValue": "x"}} for key in keys]}]}]}]}
    capture = tmp_path / "capture.json"
    capture.write_text(json.dumps(payload))
    done = run("explain", str(capture), "--dir", str(POLICIES))
    assert done.returncode == 0, done.stderr
    for number in ("4111111111111111", "5555555555554444"):
        assert number not in done.stdout and number[4:] not in done.stdout, done.stdout
    assert done.stdout.count("key masked to") == 2, done.stdout
    assert "dropped" not in done.stdout and "added" not in done.stdout.replace("added \"acme\"", "")


def test_print_in_a_set_is_accepted_and_shown_on_failure(policy_dir: Path) -> None:
    """Issue 17: print() was refused, so a FAIL had no reason. `run`'s checks accept it now."""
    from tests.peers import peer

    test_file = policy_dir / "k8s" / "k8s_test.rego"
    test_file.write_text(test_file.read_text() + (
        '\ntest_with_print if {\n\tprint("stamp setting is", data.otlp_sidecar.config.k8s.stamp)\n'
        "\tdata.otlp_sidecar.config.k8s.stamp == false\n}\n"
    ))
    done = run("test", str(policy_dir), "--opa", str(peer("opa")))
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    name = "data.otlp_sidecar.k8s_test.test_with_print"
    at = next(i for i, line in enumerate(lines) if line.startswith(f"{name}: FAIL ("))
    assert lines[at + 1:at + 4] == ["", "  stamp setting is true", ""]
    assert "engine check FAILED" not in done.stdout  # `run` would load this set: print() is no error
    assert lines[-1].startswith("FAIL: 1/")


def test_every_file_with_an_unsupported_built_in_is_named(policy_dir: Path) -> None:
    (policy_dir / "one.rego").write_text("package one\n\nx := 1\n\ny := http.send({})\n")
    (policy_dir / "two.rego").write_text("package two\n\n\nz := net.cidr_contains(\"10.0.0.0/8\", \"10.1.1.1\")\n")
    done = run("test", str(policy_dir))
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert lines[0] == "2 errors occurred during loading:"
    assert lines[1].startswith(f"{policy_dir}/one.rego:5: http.send() is not a built-in the embedded engine")
    assert lines[2].startswith(f"{policy_dir}/two.rego:4: net.cidr_contains() is not a built-in")


def test_policy_test_names_an_exemption_a_rule_wins_over(policy_dir: Path) -> None:
    """`test.card_number` is masked by `pci.card_number` whatever an exemption says: the check
    says the exemption has no effect (and passes: the data stays masked)."""
    data_file = policy_dir / "data.json"
    data = json.loads(data_file.read_text())
    data["otlp_sidecar"]["config"]["exemptions"] = [
        {"rule_id": "qa.moot", "key": "test.card_number", "reason": "published test numbers"}]
    data_file.write_text(json.dumps(data))
    for flags in (["-v"], []):  # shown without -v too: the author thinks the key goes out as it is
        done = run("test", str(policy_dir), *flags)
        assert done.returncode == 0, done.stdout + done.stderr
        assert ("exemptions without effect: qa.moot (key 'test.card_number'): pci.card_number (mask_pan) "
                "also matches it and wins") in done.stdout
        assert done.stdout.splitlines()[-1].startswith("engine checks: ok (PCI probe: ")
