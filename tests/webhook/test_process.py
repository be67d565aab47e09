"""`otlp-sidecar webhook serve` as a real process: serves over TLS, stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import re
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.tls.pki import make_pki
from tests.webhook.conftest import admission_review, deployment_pod


def test_serve_answers_and_stops_on_sigterm(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    config = tmp_path / "webhook.toml"
    config.write_text(
        f'[webhook]\nlisten = "127.0.0.1:0"\ncert_file = "{pki.server_cert}"\nkey_file = "{pki.server_key}"\n',
        encoding="utf-8",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "webhook", "serve", "--config", str(config)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port = None
        deadline = time.monotonic() + 30
        assert process.stderr is not None
        while port is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line:
                break
            match = re.search(r"listening on https://127\.0\.0\.1:(\d+)", line)
            if match:
                port = int(match.group(1))
        assert port, "the webhook did not report its port"

        context = ssl.create_default_context(cafile=pki.ca_cert)
        body = json.dumps(admission_review(deployment_pod())).encode()
        request = urllib.request.Request(
            f"https://localhost:{port}/mutate/namespace",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            answer = json.loads(response.read())
        assert answer["response"]["allowed"] is True and answer["response"]["patch"]

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
        rest = process.stderr.read()
        assert "webhook stopped" in rest and "Traceback" not in rest
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        if process.stderr is not None:
            process.stderr.close()
