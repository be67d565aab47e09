"""``python -m sidecar`` is ``otlp-sidecar``."""

from sidecar.cli import main

raise SystemExit(main())
