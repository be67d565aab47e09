"""Types of the compiled card-number detector (ext/cards.pyx); the twin: sidecar/rewrite/_cards.py."""

from typing import Final

__all__ = ["IMPLEMENTATION", "find_pans"]

IMPLEMENTATION: Final[str]

def find_pans(s: bytes | bytearray | memoryview) -> list[tuple[int, int, bytes]]: ...
