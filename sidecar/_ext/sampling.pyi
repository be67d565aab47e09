"""Types of ext/sampling.pyx: its C functions are cimported (sidecar/_ext/sampling.pxd), not called from Python."""

from typing import Final

IMPLEMENTATION: Final[str]
