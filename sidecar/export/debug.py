"""The debug exporter: every batch as one JSON line (OTLP/JSON), to stdout or a file.

It is the embedded default when no upstream is configured, so ``otlp-sidecar run``
works alone and shows what the policies did to the data.
"""

from __future__ import annotations

import json
import sys
from typing import TextIO

from sidecar.export.compress import Payload, joined
from sidecar.export.result import Exported
from sidecar.signals import Signal
from sidecar.wire.otlp_json import protobuf_to_json


class DebugExporter:
    name = "debug"

    def __init__(self, output: str = "-") -> None:
        self._output = output
        self._handle: TextIO | None = None

    async def start(self) -> None:
        if self._output == "-":
            self._handle = sys.stdout
        else:
            self._handle = open(self._output, "a", encoding="utf-8")  # noqa: SIM115 - closed in stop()

    async def export(self, signal: Signal, data: Payload) -> Exported:
        assert self._handle is not None, "start() first"
        line = json.dumps({"signal": signal.value, "request": protobuf_to_json(signal, joined(data))},
                          separators=(",", ":"))
        self._handle.write(line + "\n")
        self._handle.flush()
        return Exported()

    async def stop(self) -> None:
        if self._handle is not None and self._handle is not sys.stdout:
            self._handle.close()
        self._handle = None
