"""Compiled accelerators, built by setup.py from ``ext/*.pyx``.

Import them only through their selector modules (for example
``sidecar.rewrite``), which fall back to the pure-Python twin when the
extension is missing or ``OTLP_SIDECAR_NO_EXTENSIONS=1`` is set.
"""
