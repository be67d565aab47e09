"""Receive buffers of the HTTP/1.1 listener: the sizes a connection asks for (the pool they come
from: ``sidecar.wire.buffer_pool``)."""

from __future__ import annotations

#: free space asked for before a read when nothing larger is expected
_MIN_FREE = 8 * 1024
#: the most read at once while a head is awaited: a head is short, and the start of a large body
#: read with it is copied once more (into the body's buffer); small requests still come whole
_HEAD_READ = 16 * 1024
#: what a grown buffer keeps beyond the body it was grown for
_HEAD_ROOM = 16 * 1024
#: the least a buffer grows by for a body (beyond it, by up to twice the body received so far)
_GROW = 64 * 1024
#: the buffer of a connection that holds none
_EMPTY = bytearray()
_EMPTY_VIEW = memoryview(_EMPTY)
#: where every lingering connection reads the input it discards: one buffer for all of them, never
#: read from (each kept its own 64 KiB: 500 connections refused for want of budget held 31 MiB)
_DISCARD = bytearray(64 * 1024)
_DISCARD_VIEW = memoryview(_DISCARD)
