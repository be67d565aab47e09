"""HPACK decoding for the HTTP/2 server and client: the compiled ``sidecar._ext.hpack`` or its twin.

The compiled module is used unless ``OTLP_SIDECAR_NO_EXTENSIONS=1`` is set or it is not built;
then the pure-Python twin ``sidecar.wire.http2._hpack_py``, which behaves the same.
``IMPLEMENTATION`` says which one ("cython" or "python").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sidecar._ext import DISABLED
from sidecar.wire.http2._hpack_common import HeaderListTooLarge, HpackError

__all__ = ["IMPLEMENTATION", "Decoder", "HeaderListTooLarge", "HpackError"]

if TYPE_CHECKING or DISABLED:
    from sidecar.wire.http2._hpack_py import IMPLEMENTATION, Decoder
else:
    try:
        from sidecar._ext.hpack import IMPLEMENTATION, Decoder
    except ImportError:  # pragma: no cover - not built
        from sidecar.wire.http2._hpack_py import IMPLEMENTATION, Decoder
