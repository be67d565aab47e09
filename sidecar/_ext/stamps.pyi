"""Types of ext/stamps.pyx: its C functions are cimported (sidecar/_ext/stamps.pxd), not called from Python."""

from typing import Final

IMPLEMENTATION: Final[str]
