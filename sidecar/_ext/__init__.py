"""Compiled accelerators, built by setup.py from ``ext/*.pyx``.

Import them only through their selector modules (``sidecar.rewrite``,
``sidecar.wire.http2.hpack_decoder``), which fall back to the pure-Python twin when the
extension is missing or ``OTLP_SIDECAR_NO_EXTENSIONS=1`` is set (``DISABLED``).
"""

from __future__ import annotations

import os
import sys

#: the pure-Python twins are used, built extensions or not
DISABLED = os.environ.get("OTLP_SIDECAR_NO_EXTENSIONS", "") not in ("", "0") or sys.implementation.name != "cpython"
