"""Memory footprint: what a sidecar without TLS or JSON traffic never loads.

cryptography (~8 MiB resident) is needed only to read certificates, and protobuf's JSON
mapping (~2 MiB) only for OTLP/JSON; both are imported where they are used.
"""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_a_plaintext_protobuf_sidecar_does_not_load_cryptography_or_json_format() -> None:
    code = (
        "import sys, sidecar.app, sidecar.commands, sidecar.policy.service, sidecar.receivers.http;"
        "print(sorted({m.split('.')[0] for m in sys.modules if m.startswith('cryptography')}"
        " | {m for m in sys.modules if m.endswith('json_format')}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
