"""Types of ext/wire.pyx: its C functions are cimported (sidecar/_ext/wire.pxd), not called from Python."""

from typing import Final

IMPLEMENTATION: Final[str]
