"""Add a policy package to a copy of the shipped set (for error-path tests)."""

from __future__ import annotations

from pathlib import Path

PART = '''
extra_part(request) := {"otlp_sidecar.extra": decision} if {
\tdecision := extra.decision_for(request)
} else := {}
'''


def add_extra_policy(policy_dir: Path, body: str) -> Path:
    """Write ``extra/extra.rego`` (package otlp_sidecar.extra) and list it in main.rego."""
    folder = policy_dir / "extra"
    folder.mkdir(exist_ok=True)
    rego = folder / "extra.rego"
    rego.write_text("package otlp_sidecar.extra\n\nimport rego.v1\n\n" + body.strip() + "\n")
    (folder / "extra_test.rego").write_text(
        "package otlp_sidecar.extra_test\n\nimport rego.v1\n\n"
        "test_loaded if {\n\ttrue\n}\n"
    )
    main = policy_dir / "main.rego"
    text = main.read_text()
    if "extra_part" not in text:
        text = text.replace(
            "import data.otlp_sidecar.pci\n", "import data.otlp_sidecar.extra\nimport data.otlp_sidecar.pci\n"
        )
        text = text.replace("k8s_part(request),\n])", "k8s_part(request), extra_part(request),\n])")
        assert "extra_part(request)" in text, "main.rego's decisions_for changed: update tests/policy/extra.py"
        text += PART
        main.write_text(text)
    return rego
