"""Types of ext/hpack.pyx: the same API as sidecar.wire.http2._hpack_py."""

from typing import Final

from typing_extensions import disjoint_base

from sidecar.wire.http2._hpack_common import HeaderListTooLarge as HeaderListTooLarge
from sidecar.wire.http2._hpack_common import HpackError as HpackError

__all__ = ["IMPLEMENTATION", "Decoder", "HeaderListTooLarge", "HpackError"]

IMPLEMENTATION: Final[str]

@disjoint_base
class Decoder:
    max_header_list_size: int
    max_allowed_table_size: int
    def __init__(self, max_header_list_size: int = 65536, max_allowed_table_size: int = 4096) -> None: ...
    @property
    def table_size(self) -> int: ...
    @property
    def table_entries(self) -> list[tuple[str, str]]: ...
    def decode(self, block: bytes) -> list[tuple[str, str]]: ...
