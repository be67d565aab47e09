"""One HTTP/2 client connection of the gRPC server: frames in, calls out, answers back.

Frames are read into one reused buffer (allocated when bytes first arrive, grown for a frame
larger than it, given back when the connection goes quiet). A request message that arrived in one
frame goes to its handler in that buffer (lent with the call, to the server's pool when the handler
is done; the connection reads on in another); one that spanned frames is gathered from them. What
one read produced (acknowledgements, window updates, answers) goes out in one write.

What a client makes the connection hold is taken from the server's memory budget through the
connection's account as the bytes arrive, never from a declared size: the read buffer beyond its
first ``FIRST_READ`` bytes (read-ahead, a partial frame), and request messages until their
handler is done. A buffer that cannot grow stops reading from the client (the kernel holds the
bytes) until the budget has room; a client that sends too slowly while it holds any of it is cut
off (docs/http2.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING

from sidecar.overload.reasons import Action
from sidecar.wire.http2.calls import (
    CONTENT_TYPE,
    DEADLINE_EXCEEDED,
    INVALID_ARGUMENT,
    PREFIX,
    RESOURCE_EXHAUSTED,
    UNAVAILABLE,
    UNIMPLEMENTED,
    GrpcError,
    UnaryCall,
    grpc_message_text,
    is_grpc_content_type,
)
from sidecar.wire.http2.frames import (
    ACK,
    CANCEL,
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    DEFAULT_WINDOW,
    ENABLE_PUSH,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    GOAWAY,
    GOAWAY_HEAD,
    HEAD,
    HEADER_TABLE_SIZE,
    HEADERS,
    INITIAL_WINDOW_SIZE,
    INTERNAL_ERROR,
    MAX_CONCURRENT_STREAMS,
    MAX_FRAME_SIZE,
    MAX_HEADER_LIST_SIZE,
    MAX_WINDOW,
    MIN_FRAME_SIZE,
    NO_ERROR,
    PADDED,
    PING,
    PREFACE,
    PRIORITY,
    PRIORITY_FLAG,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    REFUSED_STREAM,
    RST_STREAM,
    SETTING,
    SETTINGS,
    STREAM_CLOSED,
    U32,
    WINDOW_UPDATE,
    ConnectionFailure,
    DecodedHeaders,
    HeaderCache,
    StreamFailure,
    frame,
    header_block,
    request_fields,
)
from sidecar.wire.http2.hpack_decoder import Decoder, HeaderListTooLarge, HpackError
from sidecar.wire.listener import format_address

if TYPE_CHECKING:
    from sidecar.wire.http2.server import GrpcServer

log = logging.getLogger("sidecar.wire.http2")

# stream states
_RECEIVING, _HANDLING, _ANSWERED = 0, 1, 2
#: HEADERS plus CONTINUATION frames of one header block (empty CONTINUATIONs cost nothing else)
MAX_HEADER_FRAGMENTS = 32
#: what a decoded field holds beyond its name and value octets, charged to the connection's
#: account with them: two str objects (49 bytes of CPython header each) and a dict slot
FIELD_OVERHEAD = 128
#: streams we reset while the client may still be sending on them, whose frames in flight are
#: ignored (RFC 9113 5.1, "closed"); older ones are forgotten, their late frames are errors
RECENT_RESETS = 128
#: a flag of our own on a header block: its HEADERS frame made the stream depend on itself
_SELF_DEPENDENT = 0x100
#: a buffer that cannot grow may take this share of the budget at most, so that requests
#: without partial frames (a normal client's) always find the rest
BUFFER_SHARE_OF_BUDGET = 7 / 8


class Stream:
    """One request: its headers, the message as it arrives, and the answer waiting for window."""

    __slots__ = (
        "body", "compressed", "consumed", "context", "fields_held", "headers", "id", "length", "lent",
        "opened", "path", "pending", "reserved", "reset", "send_window", "state", "touched",
    )

    def __init__(self, stream_id: int, path: str, headers: Mapping[str, str], send_window: int, tick: int) -> None:
        self.id = stream_id
        self.path = path
        self.headers = headers
        self.state = _RECEIVING
        self.body: bytearray | None = None
        self.length = -1  # the message length once its prefix arrived
        self.compressed = False
        self.consumed = 0  # received since the last stream WINDOW_UPDATE
        self.send_window = send_window
        self.pending = b""  # the answer's DATA still waiting for send window (trailers follow it)
        self.reserved = 0  # bytes of the connection's account held for this call
        self.fields_held = 0  # of those, what its decoded header fields hold (0 when shared)
        self.lent: bytearray | None = None  # the read buffer its message is in (to the pool when done)
        self.context: object = None  # what the server's authorizer returned for this call
        self.reset = False
        self.touched = tick  # the server's sweep tick of the last progress
        self.opened = tick  # the sweep tick of its headers (the request deadline counts from it)


class Connection(asyncio.BufferedProtocol):
    """One client connection: frames in, calls to the handlers, answers out."""

    #: the buffer of a first read (a preface, small frames, or the end of the connection),
    #: allocated when bytes arrive: a connection that says nothing costs no buffer at all.
    #: Beyond it the buffer is taken from the budget.
    FIRST_READ = 4096
    #: the read buffer's size once a frame does not fit the first one (read-ahead)
    MIN_READ = 64 << 10

    def __init__(self, server: GrpcServer) -> None:
        self._server = server
        self._limits = server.limits
        self._account = server.budget.account()
        self._buf = bytearray()
        self._charged = 0  # bytes of the buffer beyond FIRST_READ, held in the account
        self._starved = False  # reading paused: the buffer could not grow within the budget
        self._start = 0
        self._end = 0
        self._transport: asyncio.Transport | None = None
        self._preface = False
        self._settings_seen = False
        self._dead = False
        self._linger: asyncio.TimerHandle | None = None  # our side half-closed: input discarded
        self._closing = False  # GOAWAY sent or received: no new streams
        self._out: list[bytes] = []
        self._streams: dict[int, Stream] = {}
        self._last_stream = 0
        self._goaway_last: int | None = None  # the last stream id our GOAWAY said we take
        self._recent_resets: deque[int] = deque()  # streams whose frames in flight are ignored
        self._decoder = Decoder(self._limits.max_header_list_bytes, HEADER_TABLE_SIZE)
        self._header_cache = HeaderCache()
        self._continuing: tuple[int, int, list[bytes], int] | None = None  # stream, flags, parts, size
        self._blocked: dict[int, Stream] = {}  # streams whose answer waits for send window
        self._recv_consumed = 0
        self._send_window = DEFAULT_WINDOW
        self._peer_initial_window = DEFAULT_WINDOW
        self._peer_max_frame = MIN_FRAME_SIZE
        self._handshake_timer: asyncio.TimerHandle | None = None
        self.active = False  # bytes arrived since the server's last sweep
        self._quiet_since = server.tick  # the sweep tick since which nothing arrived
        self._write_paused_at = 0  # the sweep tick at which the transport paused writing (0: not)
        self._received = 0  # bytes since the last sweep
        self._rates: deque[int] = deque()  # bytes of each recent sweep while holding something
        self._frame_since = 0  # the sweep tick since which a partial frame waits (0: none)
        self._outbound_since = 0  # the sweep tick since which answers waiting exceed the bound
        self.address = ""

    # -- asyncio protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self.address = format_address(transport.get_extra_info("peername"))
        limits = self._limits
        if len(self._server.connections) >= limits.max_connections:
            self._server.count(Action.connection_limit)
            self._dead = True
            goodbye = GOAWAY_HEAD.pack(0, ENHANCE_YOUR_CALM) + b"too many connections"
            transport.write(frame(SETTINGS, 0, 0) + frame(GOAWAY, 0, 0, goodbye))
            transport.close()
            return
        self._server.connections.add(self)
        settings = b"".join(
            SETTING.pack(key, value)
            for key, value in (
                (MAX_CONCURRENT_STREAMS, limits.max_concurrent_streams),
                (INITIAL_WINDOW_SIZE, limits.window),
                (MAX_FRAME_SIZE, limits.max_frame_size),
                (MAX_HEADER_LIST_SIZE, limits.max_header_list_bytes),
            )
        )
        self._out.append(frame(SETTINGS, 0, 0, settings))
        if limits.window > DEFAULT_WINDOW:
            self._out.append(frame(WINDOW_UPDATE, 0, 0, U32.pack(limits.window - DEFAULT_WINDOW)))
        self._flush()
        if self._server.closing:  # accepted while the server closes: no call is taken
            self.goaway()
            return
        self._handshake_timer = asyncio.get_running_loop().call_later(
            limits.handshake_timeout, self._handshake_expired
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._dead = True
        # asyncio's TLS protocol keeps bound methods of this protocol after the loss, and the
        # transport keeps it: a cycle only the full collector frees, with 256 KiB of TLS buffers in it
        self._transport = None
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
        if self._linger is not None:
            self._linger.cancel()
        self._server.connections.discard(self)
        for stream in list(self._streams.values()):
            stream.reset = True  # a handler still running answers nobody, then frees its slot
            if stream.state != _HANDLING:
                self._drop(stream)
        self._out.clear()
        self._buf = bytearray()
        self._start = self._end = 0
        self._account.give(self._charged)
        self._charged = 0

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._linger is not None:
            return _DISCARD  # read only to be dropped: one scratch buffer for every connection
        if not self._buf:  # a first read, or the first after a quiet spell (or the end: EOF)
            self._buf = bytearray(self.FIRST_READ)
        elif len(self._buf) - self._end < 4096:
            # a fresh or quiet connection (its buffer given back), or room made short by a
            # refused growth while the transport was already reading: the first size, or room
            # at the front, never growth beyond what the account holds
            self._make_room(grow=len(self._buf) < self.MIN_READ)
            if len(self._buf) == self._end:  # never an empty buffer (asyncio would fail)
                self._buf = self._buf + bytes(4096)
        return memoryview(self._buf)[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        if self._linger is not None:
            return
        self._end += nbytes
        self._received += nbytes
        self.active = True
        if self._dead:
            return
        try:
            self._receive()
            if not self._dead:
                self._make_room(grow=True)
        except ConnectionFailure as exc:
            self._fail(exc.code, str(exc))
        except Exception:  # a bug, not the client's fault: end this connection, keep serving
            log.exception("HTTP/2 connection from %s failed", self.address)
            self._fail(INTERNAL_ERROR, "internal error")
        self._flush()

    def data_received(self, data: bytes) -> None:
        """Bytes handed over by a wrapping protocol (the TLS acceptor) rather than the transport."""
        view = memoryview(data)
        while view and not self._dead:
            if self._starved:  # cannot wait in the kernel: these bytes were read already
                self._server.count(self._account.refused or Action.budget_full)
                self._fail(ENHANCE_YOUR_CALM, "a frame larger than the receive budget has room for")
                return
            target = self.get_buffer(len(view))
            n = min(len(target), len(view))
            target[:n] = view[:n]
            del target
            self.buffer_updated(n)
            view = view[n:]

    def _make_room(self, *, grow: bool, counted: bool = False) -> None:
        """Room in the read buffer for the next frame: the unread part moved to the front, in a
        larger buffer when a frame needs one. Grown as the frame arrives (at most twice what is
        here), so a declared length costs nothing until it is sent, and beyond ``MIN_READ`` only
        with bytes from the account; when the account or the budget refuse, reading pauses.
        Never resized in place: the transport may still hold a view of the old buffer."""
        buf, start, end = self._buf, self._start, self._end
        if start == end:
            self._start = self._end = start = end = 0
        need, have = self._needed(), end - start
        if len(buf) - end >= max(need - have, 4096):
            return
        if not grow or need <= self.MIN_READ:
            size = max(len(buf), self.MIN_READ)
        else:
            size = max(len(buf), min(need + self.MIN_READ, 2 * max(have, self.MIN_READ)))
        pooled = self._server.buffers.take(size) if size > len(buf) else None
        if pooled is not None:  # its memory is committed already: taken if the account has room
            if self._charge_buffer(len(pooled)):
                size = len(pooled)
            else:
                self._server.buffers.put(pooled)
                pooled = None
        if size > len(buf) and pooled is None and not self._charge_buffer(size):
            size = len(buf)
            if len(buf) - have < max(need - have, 4096):
                self._starve(counted)
        if size == len(buf) and start == 0:
            return
        fresh = pooled if pooled is not None else bytearray(size) if size > len(buf) else buf
        if fresh is buf:
            fresh[:have] = buf[start:end]
        else:  # the smaller one left is not pooled: it was a step of the growth
            memoryview(fresh)[:have] = memoryview(buf)[start:end]  # view to view: one copy
        self._buf, self._start, self._end = fresh, 0, have

    def _drop_buffer(self, buf: bytearray) -> None:
        """A read buffer the connection no longer uses: a large one goes to the server's pool."""
        if len(buf) >= self.MIN_READ:
            self._server.buffers.put(buf)

    def _charge_buffer(self, size: int) -> bool:
        """Take what a buffer of ``size`` bytes holds beyond ``FIRST_READ`` from the account;
        beyond ``MIN_READ`` (a partial large frame) only while the budget keeps room for others."""
        extra = size - self.FIRST_READ - self._charged
        if extra <= 0:
            return True
        budget = self._account.budget
        if size > self.MIN_READ and budget.in_use + extra > budget.limit * BUFFER_SHARE_OF_BUDGET:
            self._account.refused = Action.budget_full
            return False
        if not self._account.take(extra):
            return False
        self._charged += extra
        return True

    def _starve(self, counted: bool = False) -> None:
        if not self._starved:
            self._starved = True
            if not counted:
                self._server.count(self._account.refused or Action.budget_full)
            if self._transport is not None:
                self._transport.pause_reading()

    def _feed(self) -> None:
        """Called at sweeps while starved: read again once the buffer may grow (a refusal
        again is the same protective action, not counted twice)."""
        self._starved = False
        self._make_room(grow=True, counted=True)
        if not self._starved and not self._write_paused_at and self._transport is not None:
            self._transport.resume_reading()

    def eof_received(self) -> bool:
        return False  # close; the streams still handled answer nobody

    def pause_writing(self) -> None:
        # the client does not read what we send (PING or SETTINGS floods): stop reading from it
        # (and give up on it after the stall timeout)
        self._write_paused_at = self._server.tick or 1
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused_at = 0
        if self._transport is not None and not self._transport.is_closing() and not self._starved:
            self._transport.resume_reading()

    # -- receiving -------------------------------------------------------------------------------

    def _needed(self) -> int:
        """Bytes the next frame needs in one piece (header included)."""
        if not self._preface:
            return len(PREFACE) + 9
        if self._end - self._start < 9:
            return 9
        buf, start = self._buf, self._start
        length = (buf[start] << 16) | (buf[start + 1] << 8) | buf[start + 2]
        return 9 + min(length, self._limits.max_frame_size)

    def _receive(self) -> None:
        buf = self._buf
        if not self._preface:
            if self._end - self._start < len(PREFACE):
                if not PREFACE.startswith(bytes(buf[self._start : self._end])):
                    raise ConnectionFailure(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                return
            if buf[self._start : self._start + len(PREFACE)] != PREFACE:
                raise ConnectionFailure(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
            self._start += len(PREFACE)
            self._preface = True
        view = memoryview(buf)
        max_frame = self._limits.max_frame_size
        while not self._dead and self._end - self._start >= 9:
            if self._buf is not buf:  # the buffer went with the message before (_lend)
                buf = self._buf
                view = memoryview(buf)
            start = self._start
            high, low, kind, flags, stream_id = HEAD.unpack_from(buf, start)
            length = (high << 16) | low
            if length > max_frame:
                raise ConnectionFailure(FRAME_SIZE_ERROR, f"frame of {length} bytes over the {max_frame} advertised")
            if self._end - start < 9 + length:
                return
            self._start = start + 9 + length
            stream_id &= 0x7FFFFFFF
            payload = view[start + 9 : start + 9 + length]
            if self._continuing is not None and kind != CONTINUATION:
                raise ConnectionFailure(PROTOCOL_ERROR, "header block interrupted by another frame")
            if not self._settings_seen and kind != SETTINGS:
                raise ConnectionFailure(PROTOCOL_ERROR, "the first frame must be SETTINGS")
            if kind == DATA:
                self._on_data(flags, stream_id, payload)
            elif kind in (HEADERS, CONTINUATION):
                self._on_headers(kind, flags, stream_id, payload)
            elif kind == SETTINGS:
                self._on_settings(flags, stream_id, payload)
            elif kind == WINDOW_UPDATE:
                self._on_window_update(stream_id, payload)
            elif kind == PING:
                self._on_ping(flags, stream_id, payload)
            elif kind == RST_STREAM:
                self._on_reset(stream_id, payload)
            elif kind == GOAWAY:
                if stream_id != 0 or length < 8:
                    raise ConnectionFailure(PROTOCOL_ERROR, "malformed GOAWAY")
                self._closing = True
                self._close_if_idle()
            elif kind == PRIORITY:  # deprecated (RFC 9113 5.3.2): checked, then ignored
                self._on_priority(stream_id, payload)
            elif kind == PUSH_PROMISE:
                raise ConnectionFailure(PROTOCOL_ERROR, "a client cannot push")
            # other frame types are extensions this server does not know: ignored (section 5.5)

    def _on_priority(self, stream_id: int, payload: memoryview) -> None:
        if stream_id == 0:
            raise ConnectionFailure(PROTOCOL_ERROR, "PRIORITY on stream 0")
        if len(payload) != 5:
            self._reset_stream(stream_id, FRAME_SIZE_ERROR)  # a stream error (RFC 9113 6.3)
        elif U32.unpack_from(payload)[0] & 0x7FFFFFFF == stream_id:  # a stream error (5.3.1)
            if stream_id > self._last_stream:  # no RST_STREAM on an idle stream (5.1)
                raise ConnectionFailure(PROTOCOL_ERROR, "a stream cannot depend on itself")
            self._reset_stream(stream_id, PROTOCOL_ERROR)

    def _closed_stream(self, stream_id: int, kind: str) -> None:
        """A DATA or HEADERS frame for a stream that is not open: ignored when we reset that
        stream (or refused it by GOAWAY) while the client may have been sending; otherwise the
        client broke RFC 9113 5.1 / 5.1.1 and the connection ends."""
        if stream_id in self._recent_resets or (self._goaway_last is not None and stream_id > self._goaway_last):
            return
        if kind == "HEADERS":
            raise ConnectionFailure(
                PROTOCOL_ERROR, f"HEADERS on stream {stream_id}: closed, or not above the last stream id used"
            )
        raise ConnectionFailure(STREAM_CLOSED, f"DATA on closed stream {stream_id}")

    def _note_reset(self, stream: Stream | int) -> None:
        """We end a stream the client may still be sending on: its frames in flight are ignored."""
        stream_id = stream if isinstance(stream, int) else stream.id
        if isinstance(stream, Stream) and stream.state != _RECEIVING:
            return  # the client had ended it: nothing more may come
        self._recent_resets.append(stream_id)
        if len(self._recent_resets) > RECENT_RESETS:
            self._recent_resets.popleft()

    def _on_data(self, flags: int, stream_id: int, payload: memoryview) -> None:
        if stream_id == 0:
            raise ConnectionFailure(PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)
        # connection flow control counts every DATA byte, padding included, on any stream
        self._recv_consumed += size
        if self._recv_consumed > self._limits.window:
            raise ConnectionFailure(FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        if self._recv_consumed >= self._limits.window // 2:
            self._out.append(frame(WINDOW_UPDATE, 0, 0, U32.pack(self._recv_consumed)))
            self._recv_consumed = 0
        if flags & PADDED:
            if size < 1 or payload[0] >= size:
                raise ConnectionFailure(PROTOCOL_ERROR, "padding longer than the frame")
            payload = payload[1 : size - payload[0]]
        stream = self._streams.get(stream_id)
        if stream is None:
            if stream_id > self._last_stream:
                raise ConnectionFailure(PROTOCOL_ERROR, "DATA on an idle stream")
            self._closed_stream(stream_id, "DATA")
            return
        if stream.state != _RECEIVING:
            if stream.state == _HANDLING:  # the client ended the stream already
                self._reset_stream(stream_id, STREAM_CLOSED)
            return
        stream.consumed += size
        stream.touched = self._server.tick
        if stream.consumed > self._limits.window:
            self._reset_stream(stream_id, FLOW_CONTROL_ERROR)
            return
        self._take_message_bytes(stream, payload, flags & END_STREAM)
        if stream.state == _RECEIVING and stream.consumed >= self._limits.window // 2:
            self._out.append(frame(WINDOW_UPDATE, 0, stream_id, U32.pack(stream.consumed)))
            stream.consumed = 0

    def _take_message_bytes(self, stream: Stream, payload: memoryview, end: int) -> None:
        if end:
            stream.state = _HANDLING  # nothing more comes from the client
        if stream.body is None and end and len(payload) >= 5:
            # the common case: the whole message in one frame, lent in its buffer or copied once
            compressed, length = PREFIX.unpack_from(payload)
            if len(payload) == 5 + length:
                if self._message_fits(stream, compressed, length):
                    whole: bytes | memoryview | None = self._lend(stream, payload)
                    if whole is None and self._hold(stream, length):
                        whole = bytes(payload[5:])
                    if whole is not None:
                        stream.compressed = compressed
                        self._dispatch(stream, whole)
                return
        if stream.body is None:
            stream.body = bytearray()
        body = stream.body
        limit = (stream.length if stream.length >= 0 else self._limits.max_message_bytes) + 5
        if len(body) + len(payload) > limit:
            if stream.length >= 0:
                self._malformed(stream, "a unary call carries one message")
            else:
                message = f"message exceeds the limit of {limit - 5} bytes"
                self._refuse(stream, RESOURCE_EXHAUSTED, message, "too_large", Action.request_too_large)
            return
        if not self._hold(stream, len(payload)):
            return
        body += payload
        if stream.length < 0 and len(body) >= 5:
            compressed, length = PREFIX.unpack_from(body)
            if not self._message_fits(stream, compressed, length):
                return
            stream.compressed, stream.length = compressed, length
            if len(body) > 5 + length:
                self._malformed(stream, "a unary call carries one message")
                return
        if not end:
            return
        if stream.length < 0:
            self._malformed(stream, "request has no complete gRPC message")
        elif len(body) - 5 < stream.length:
            got = len(body) - 5
            message = f"request message is truncated: {got} of {stream.length} bytes"
            self._malformed(stream, message)
        else:
            # a view past the prefix, not a copy: a second copy of a message that spanned
            # frames cost more than the rest of its receiving (a fresh allocation of its size
            # each time, page faults included)
            self._dispatch(stream, memoryview(body)[5:])

    def _lend(self, stream: Stream, payload: memoryview) -> memoryview | None:
        """The message of ``payload`` (the frame just read) in place, when that costs less than
        copying it: the read buffer goes with the call, with what the account holds for it, and
        comes back to the server's pool when the handler is done; what was read past the frame
        moves to another buffer (from the pool when one holds it and the next frame). None when
        the message is to be copied instead: the buffer is a small one or more than twice the
        message, more was read past the frame than the message holds, or the account has no
        room for the other buffer."""
        buf, start, end = self._buf, self._start, self._end
        tail = end - start
        # lent only when the message fills at least half the buffer (the call holds all of it)
        # and less was read past the frame than the message holds (that much is copied instead)
        if len(buf) < self.MIN_READ or 2 * len(payload) < len(buf) or tail >= len(payload):
            return None
        # the next buffer holds what was read past the frame (maybe several frames) and, when the
        # pool has one that large, the whole next frame
        need = max(self._needed(), tail)
        pool = self._server.buffers
        new = pool.take(need) if need > self.FIRST_READ else None
        size = len(new) if new is not None else max(self.FIRST_READ, tail)
        lent_charge = self._charged
        self._charged = 0
        # the lent buffer is held whole: its first FIRST_READ bytes were the connection's own
        taken = self._account.take(self.FIRST_READ)
        if not taken or not self._charge_buffer(size):
            if taken:
                self._account.give(self.FIRST_READ)
            self._charged = lent_charge
            if new is not None:
                pool.put(new)
            return None
        if new is None:
            new = bytearray(size)
        if tail:
            memoryview(new)[:tail] = memoryview(buf)[start:end]  # view to view: one copy
        # nothing can fail past this point: the call holds the buffer from here on
        stream.reserved += lent_charge + self.FIRST_READ
        stream.lent = buf
        self._buf, self._start, self._end = new, 0, tail
        return payload[5:]

    def _message_fits(self, stream: Stream, compressed: int, length: int) -> bool:
        """Whether a message announced by its prefix may be received. If not, the call is
        refused. Nothing is taken from the budget for a declared size: bytes are, as they come."""
        limit = min(self._limits.max_message_bytes, self._account.share)
        if compressed > 1:
            self._malformed(stream, "the compressed flag of a message must be 0 or 1")
            return False
        if length > limit:
            message = f"message of {length} bytes exceeds the limit of {limit} bytes"
            self._refuse(stream, RESOURCE_EXHAUSTED, message, "too_large", Action.request_too_large)
            return False
        return True

    def _hold(self, stream: Stream, size: int) -> bool:
        """Take ``size`` more bytes of the stream's message from the account; if they do not
        fit (the connection's share, or the budget), the call is refused as retryable."""
        if self._account.take(size):
            stream.reserved += size
            return True
        action = self._account.refused or Action.budget_full
        self._refuse(stream, UNAVAILABLE, self._account.message(), "busy", action)
        return False

    def release(self, stream: Stream) -> None:
        """The handler is done with the stream's message: its bytes go back to the budget."""
        if stream.reserved:
            self._account.give(stream.reserved)
            stream.reserved = stream.fields_held = 0
        if stream.lent is not None:
            self._server.buffers.put(stream.lent)
            stream.lent = None

    def _malformed(self, stream: Stream, message: str) -> None:
        self._refuse(stream, INVALID_ARGUMENT, message, "malformed", Action.malformed_request)

    def _refuse(self, stream: Stream, status: int, message: str, reason: str, action: Action | None = None) -> None:
        """Answer a call the server refuses itself (framing, size), before or instead of its handler."""
        self._server.refused(stream.path, reason)
        if action is not None:
            self._server.count(action)
        self._answer_error(stream, status, message, early=True)

    def _on_headers(self, kind: int, flags: int, stream_id: int, payload: memoryview) -> None:
        if kind == CONTINUATION:
            if self._continuing is None or self._continuing[0] != stream_id:
                raise ConnectionFailure(PROTOCOL_ERROR, "CONTINUATION without a header block to continue")
            first_stream, first_flags, parts, size = self._continuing
            size += len(payload)
            if size > self._limits.max_header_list_bytes or len(parts) >= MAX_HEADER_FRAGMENTS:
                raise ConnectionFailure(ENHANCE_YOUR_CALM, "header block too large or in too many frames")
            parts.append(bytes(payload))
            if not flags & END_HEADERS:
                self._continuing = (first_stream, first_flags, parts, size)
                return
            self._continuing = None
            self._header_block(stream_id, first_flags, b"".join(parts))
            return
        if stream_id == 0:
            raise ConnectionFailure(PROTOCOL_ERROR, "HEADERS on stream 0")
        size = len(payload)
        if flags & PADDED:
            if size < 1 or payload[0] >= size:
                raise ConnectionFailure(PROTOCOL_ERROR, "padding longer than the frame")
            payload = payload[1 : size - payload[0]]
        if flags & PRIORITY_FLAG:
            if len(payload) < 5:
                raise ConnectionFailure(FRAME_SIZE_ERROR, "HEADERS too short for its priority fields")
            if U32.unpack_from(payload)[0] & 0x7FFFFFFF == stream_id:
                flags |= _SELF_DEPENDENT
            payload = payload[5:]
        if len(payload) > self._limits.max_header_list_bytes:
            raise ConnectionFailure(ENHANCE_YOUR_CALM, "header block too large")
        if not flags & END_HEADERS:
            self._continuing = (stream_id, flags, [bytes(payload)], len(payload))
            return
        self._header_block(stream_id, flags, bytes(payload))

    def _decode(self, block: bytes) -> tuple[DecodedHeaders, int]:
        """The block's method, path and other fields, or why the request is malformed; and the
        bytes a stream holds with them (0 for a cached block's: shared by every stream using it).
        HPACK errors end the connection: the table is then no longer shared."""
        cached = self._header_cache.get(block)
        if cached is not None:
            return cached, 0
        try:
            fields = self._decoder.decode(block)
        except HeaderListTooLarge:
            raise ConnectionFailure(ENHANCE_YOUR_CALM, "header list too large") from None
        except HpackError as exc:
            raise ConnectionFailure(COMPRESSION_ERROR, f"HPACK: {exc}") from None
        result = request_fields(fields)
        decoded_size = sum(len(name) + len(value) for name, value in fields)
        self._header_cache.put(block, result, HeaderCache.only_indexed(block), decoded_size)
        return result, decoded_size + FIELD_OVERHEAD * len(fields)

    def _header_block(self, stream_id: int, flags: int, block: bytes) -> None:
        decoded, held = self._decode(block)  # always: the HPACK table must follow every block
        stream = self._streams.get(stream_id)
        if stream is not None or stream_id <= self._last_stream:
            # trailers of a request (they end it), or a block for a stream already done
            if stream is None:
                self._closed_stream(stream_id, "HEADERS")
                return
            if stream.state != _RECEIVING:
                self._reset_stream(stream_id, STREAM_CLOSED)  # the client ended it already
                return
            if not flags & END_STREAM:
                self._reset_stream(stream_id, PROTOCOL_ERROR)  # trailers must end the request
                return
            self._take_message_bytes(stream, memoryview(b""), END_STREAM)
            return
        if stream_id % 2 == 0:
            raise ConnectionFailure(PROTOCOL_ERROR, "a client stream id must be odd")
        self._last_stream = stream_id
        if self._closing:
            return  # after GOAWAY: not processed, the client retries it elsewhere
        if flags & _SELF_DEPENDENT:
            refusal = PROTOCOL_ERROR  # RFC 9113 5.3.1: a stream error
        elif len(self._streams) >= self._limits.max_concurrent_streams:
            refusal = REFUSED_STREAM
            self._server.count(Action.stream_limit)
        elif isinstance(decoded, StreamFailure):
            refusal = decoded.code
        elif not self._account.take(held):
            # the fields a stream keeps are the connection's too: a few bytes of HPACK indexes
            # decode to up to max_header_list_bytes, held while the stream is open
            refusal = REFUSED_STREAM  # retried by the client
            self._server.count(self._account.refused or Action.budget_full)
        else:
            self._open_stream(stream_id, flags, *decoded, held)
            return
        self._out.append(frame(RST_STREAM, 0, stream_id, U32.pack(refusal)))
        if not flags & END_STREAM:
            self._note_reset(stream_id)

    def _open_stream(
        self, stream_id: int, flags: int, method: str, path: str, headers: Mapping[str, str], held: int,
    ) -> None:
        """A new call; ``held``: what its fields took from the account (given back with the rest)."""
        stream = Stream(stream_id, path, headers, self._peer_initial_window, self._server.tick)
        stream.reserved = stream.fields_held = held
        self._streams[stream_id] = stream
        if flags & END_STREAM:
            stream.state = _HANDLING  # nothing more comes from the client
        if method != "POST":
            self._answer_http(stream, "405")
        elif not is_grpc_content_type(headers.get("content-type", "")):
            self._answer_http(stream, "415")
        elif self._server.routes.get(path) is None:
            self._refuse(stream, UNIMPLEMENTED, f"unknown method {path}", "unimplemented")
        else:
            stream.context, denied = self._server.authorize(path, self._transport)
            if denied is not None:
                self._answer_error(stream, denied.status, denied.message, early=True)  # before the body
            elif flags & END_STREAM:
                self._take_message_bytes(stream, memoryview(b""), END_STREAM)

    def _on_settings(self, flags: int, stream_id: int, payload: memoryview) -> None:
        if stream_id != 0:
            raise ConnectionFailure(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if len(payload):
                raise ConnectionFailure(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise ConnectionFailure(FRAME_SIZE_ERROR, "SETTINGS payload not a multiple of 6")
        for offset in range(0, len(payload), 6):
            key, value = SETTING.unpack_from(payload, offset)
            if key == INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ConnectionFailure(FLOW_CONTROL_ERROR, "initial window over 2^31-1")
                delta = value - self._peer_initial_window
                self._peer_initial_window = value
                for stream in self._streams.values():
                    stream.send_window += delta
                    if stream.send_window > MAX_WINDOW:
                        raise ConnectionFailure(FLOW_CONTROL_ERROR, "a stream window over 2^31-1")
            elif key == MAX_FRAME_SIZE:
                if not MIN_FRAME_SIZE <= value <= (1 << 24) - 1:
                    raise ConnectionFailure(PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE out of range")
                self._peer_max_frame = value
            elif key == ENABLE_PUSH and value > 1:
                raise ConnectionFailure(PROTOCOL_ERROR, "SETTINGS_ENABLE_PUSH must be 0 or 1")
        if not self._settings_seen:
            self._settings_seen = True
            if self._handshake_timer is not None:
                self._handshake_timer.cancel()
                self._handshake_timer = None
        self._out.append(frame(SETTINGS, ACK, 0))
        self._pump_all()

    def _on_window_update(self, stream_id: int, payload: memoryview) -> None:
        if len(payload) != 4:
            raise ConnectionFailure(FRAME_SIZE_ERROR, "WINDOW_UPDATE of the wrong size")
        increment = U32.unpack_from(payload)[0] & 0x7FFFFFFF
        if stream_id == 0:
            if increment == 0:
                raise ConnectionFailure(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                raise ConnectionFailure(FLOW_CONTROL_ERROR, "connection window over 2^31-1")
            self._pump_all()
            return
        stream = self._streams.get(stream_id)
        if stream is None:
            if stream_id > self._last_stream:
                raise ConnectionFailure(PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
            if increment == 0:  # a stream error whatever the stream's state (RFC 9113 6.9)
                self._out.append(frame(RST_STREAM, 0, stream_id, U32.pack(PROTOCOL_ERROR)))
            return
        if increment == 0:
            self._reset_stream(stream_id, PROTOCOL_ERROR)
            return
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            self._reset_stream(stream_id, FLOW_CONTROL_ERROR)
            return
        self._pump(stream)

    def _on_ping(self, flags: int, stream_id: int, payload: memoryview) -> None:
        if stream_id != 0:
            raise ConnectionFailure(PROTOCOL_ERROR, "PING on a stream")
        if len(payload) != 8:
            raise ConnectionFailure(FRAME_SIZE_ERROR, "PING payload must be 8 bytes")
        if not flags & ACK:
            self._out.append(frame(PING, ACK, 0, bytes(payload)))

    def _on_reset(self, stream_id: int, payload: memoryview) -> None:
        if stream_id == 0:
            raise ConnectionFailure(PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if len(payload) != 4:
            raise ConnectionFailure(FRAME_SIZE_ERROR, "RST_STREAM of the wrong size")
        if stream_id > self._last_stream:
            raise ConnectionFailure(PROTOCOL_ERROR, "RST_STREAM on an idle stream")
        if stream_id in self._recent_resets:  # the client sends nothing more on it
            self._recent_resets.remove(stream_id)
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        stream.reset = True
        if stream.state != _HANDLING:
            self._drop(stream)
        # a running handler keeps its slot until it is done (a rapid reset cannot pile them up)

    # -- answering -------------------------------------------------------------------------------

    def _dispatch(self, stream: Stream, message: bytes | memoryview) -> None:
        stream.body = None
        call = UnaryCall(
            stream.path, stream.headers, message, stream.compressed,
            # a call is dispatched only after connection_made set the transport (hot path: no check)
            self._transport, stream.context, self._account,  # type: ignore[arg-type]
        )
        self._server.run(self, stream, call)

    def answer(self, stream: Stream, reply: bytes | None, error: GrpcError | None) -> None:
        """Called by the server when a handler is done."""
        if stream.reset or self._dead:
            self._drop(stream)
            return
        if error is not None:
            self._answer_error(stream, error.status, error.message, early=False)
        else:
            self._answer_ok(stream, reply or b"")
        self._flush()

    def _answer_ok(self, stream: Stream, reply: bytes) -> None:
        stream.state = _ANSWERED
        sid = stream.id
        message = PREFIX.pack(False, len(reply)) + reply
        self._out.append(frame(HEADERS, END_HEADERS, sid, _OK_HEAD))
        size = len(message)
        if size <= self._send_window and size <= stream.send_window and size <= self._peer_max_frame:
            self._send_window -= size
            self._out.append(frame(DATA, 0, sid, message))
            self._out.append(frame(HEADERS, END_HEADERS | END_STREAM, sid, _OK_TRAILERS))
            self._drop(stream)
            return
        stream.pending = message
        stream.touched = self._server.tick
        self._blocked[sid] = stream
        self._pump(stream)

    def _answer_error(self, stream: Stream, status: int, message: str, *, early: bool) -> None:
        block = header_block(
            [(":status", "200"), ("content-type", CONTENT_TYPE),
             ("grpc-status", str(status)), ("grpc-message", grpc_message_text(message))]
        )
        self._finish(stream, block, early)

    def _answer_http(self, stream: Stream, status: str) -> None:
        self._finish(stream, header_block([(":status", status)]), early=True)

    def _finish(self, stream: Stream, block: bytes, early: bool) -> None:
        self._out.append(frame(HEADERS, END_HEADERS | END_STREAM, stream.id, block))
        if early and stream.state == _RECEIVING:
            # answered before the request ended: ask the client to stop sending (section 8.1)
            self._out.append(frame(RST_STREAM, 0, stream.id, U32.pack(NO_ERROR)))
            self._note_reset(stream)
        stream.state = _ANSWERED
        self._drop(stream)

    def _pump(self, stream: Stream) -> None:
        """Send what flow control now allows of an answer that was waiting for window; the
        trailers once all of it is sent."""
        if stream.id not in self._blocked:
            return  # no answer waits (window given early, or to a stream still receiving)
        while stream.pending:
            room = min(self._send_window, stream.send_window, self._peer_max_frame)
            if room <= 0:
                return
            chunk, stream.pending = stream.pending[:room], stream.pending[room:]
            self._send_window -= len(chunk)
            stream.send_window -= len(chunk)
            stream.touched = self._server.tick
            self._out.append(frame(DATA, 0, stream.id, chunk))
        self._out.append(frame(HEADERS, END_HEADERS | END_STREAM, stream.id, _OK_TRAILERS))
        self._drop(stream)

    def _pump_all(self) -> None:
        if self._blocked:
            for stream in list(self._blocked.values()):
                self._pump(stream)

    def _reset_stream(self, stream_id: int, code: int) -> None:
        self._out.append(frame(RST_STREAM, 0, stream_id, U32.pack(code)))
        stream = self._streams.get(stream_id)
        if stream is not None:
            self._note_reset(stream)
            stream.reset = True
            if stream.state != _HANDLING:
                self._drop(stream)

    def _drop(self, stream: Stream) -> None:
        """The stream is done: its slot, its budget and its buffers are freed."""
        stream.body = None
        stream.pending = b""
        self._blocked.pop(stream.id, None)
        self.release(stream)
        if self._streams.get(stream.id) is stream:
            del self._streams[stream.id]
        self._close_if_idle()

    # -- the connection --------------------------------------------------------------------------

    def goaway(self) -> None:
        """Graceful close: streams received so far are answered, newer ones are not taken."""
        if self._dead or self._closing:
            self._close_if_idle()
            return
        self._closing = True
        self._goaway_last = self._last_stream
        self._out.append(frame(GOAWAY, 0, 0, GOAWAY_HEAD.pack(self._last_stream, NO_ERROR)))
        self._flush()
        self._close_if_idle()

    def _close_if_idle(self) -> None:
        if self._closing and not self._streams:
            self.close()

    def close(self, *, linger: bool = True) -> None:
        """Send what is queued (our GOAWAY last), then end the connection gracefully.

        Closing a socket whose peer's frames are still arriving makes the kernel answer them with
        a TCP reset, and a reset can destroy what we sent before it was read: the client would see
        "connection reset" instead of our GOAWAY. So our side is half-closed (FIN after the
        queued bytes), what the client still sends is read and dropped, and the socket is closed
        when the client closes its side or after ``linger_timeout``. TLS has no half-close in
        asyncio: it closes at once, after close_notify. ``linger=False`` (the server's last step at
        shutdown, after its grace period) closes at once too.
        """
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self._linger is not None:  # lingering already: the timer or the client's FIN ends it
            if not linger:
                transport.close()
            return
        self._flush()
        self._dead = True
        if not linger or not transport.can_write_eof():
            transport.close()
            return
        try:
            transport.write_eof()
        except OSError:  # the client is gone already (its reset came before our FIN)
            transport.abort()
            return
        self._linger = asyncio.get_running_loop().call_later(self._limits.linger_timeout, self._linger_over)
        self._buf = bytearray()
        self._start = self._end = 0
        self._account.give(self._charged)
        self._charged = 0
        if self._starved or self._write_paused_at:
            self._starved = False
            transport.resume_reading()

    def _linger_over(self) -> None:
        transport = self._transport
        if transport is not None:
            # answers the client never read would hold the socket open for ever: dropped
            transport.abort() if transport.get_write_buffer_size() else transport.close()

    def _fail(self, code: int, message: str, action: Action | None = Action.protocol_error) -> None:
        log.debug("HTTP/2 connection from %s ended: %s", self.address, message)
        if action is not None:
            self._server.count(action)
        self._out.append(frame(GOAWAY, 0, 0, GOAWAY_HEAD.pack(self._last_stream, code) + message.encode()[:256]))
        self.close()
        self._dead = True

    def _cut(self, action: Action | None, message: str, status: int = DEADLINE_EXCEEDED) -> None:
        """End a connection that holds budget without sending fast enough (or waits for budget
        too long): its requests being received are answered ``status``, then GOAWAY and close."""
        for stream in list(self._streams.values()):
            if stream.state == _RECEIVING:
                self._server.refused(stream.path, "timeout" if status == DEADLINE_EXCEEDED else "busy")
                self._answer_error(stream, status, message, early=True)
        self._fail(ENHANCE_YOUR_CALM, message, action)

    def _handshake_expired(self) -> None:
        self._handshake_timer = None
        if not self._settings_seen and not self._dead:
            self._fail(PROTOCOL_ERROR, "no connection preface in time", Action.header_timeout)

    def _flush(self) -> None:
        out = self._out
        if out and self._transport is not None and not self._transport.is_closing():
            self._transport.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()

    def sweep(self, tick: int) -> None:
        """Called by the server about once a second (``tick`` counts the calls): end what
        stalled or is too slow, close an idle connection, give back a quiet connection's buffer,
        read again once a buffer that could not grow may."""
        if self._dead or self._transport is None:
            return
        limits = self._limits
        if self.active:
            self._quiet_since = tick
        elif self._start == self._end and self._buf:
            self._drop_buffer(self._buf)
            self._buf = bytearray()  # allocated again when bytes arrive
            self._start = self._end = 0
            self._account.give(self._charged)
            self._charged = 0
        self.active = False
        if self._starved:
            self._feed()
        if self._write_paused_at and tick - self._write_paused_at > limits.stall_timeout:
            log.debug("HTTP/2 connection from %s aborted: it does not read its answers", self.address)
            self._server.count(Action.slow_body)
            self._dead = True
            self._transport.abort()
            return
        if self._too_slow(tick) or self._outbound_stuck(tick):
            return
        for stream in list(self._streams.values()):
            if stream.state == _RECEIVING:
                if tick - stream.opened > limits.request_deadline:
                    self._server.refused(stream.path, "timeout")
                    self._server.count(Action.request_deadline)
                    message = f"the request did not arrive within {limits.request_deadline:g} s"
                    self._answer_error(stream, DEADLINE_EXCEEDED, message, early=True)
                elif tick - stream.touched > limits.stall_timeout:
                    self._server.refused(stream.path, "timeout")
                    self._server.count(Action.slow_body)
                    self._answer_error(stream, DEADLINE_EXCEEDED, "the request stopped arriving", early=True)
            elif stream.pending and tick - stream.touched > limits.stall_timeout:
                self._reset_stream(stream.id, CANCEL)  # the client gives no window for its answer
        if not self._streams and tick - self._quiet_since > limits.idle_timeout:
            self._server.count(Action.idle_timeout)
            self.goaway()
        self._flush()

    def _too_slow(self, tick: int) -> bool:
        """Whether the connection was cut: it holds a partial frame or a request being received
        and sent less than ``min_receive_rate`` on average over the last ``min_rate_grace``
        seconds, or one frame took longer than ``request_deadline``."""
        limits = self._limits
        received, self._received = self._received, 0
        partial = self._settings_seen and self._end > self._start
        if not partial:
            self._frame_since = 0
        elif not self._frame_since:
            self._frame_since = tick
        holding = partial or any(stream.state == _RECEIVING for stream in self._streams.values())
        if not holding:
            self._rates.clear()
            return False
        rates = self._rates
        rates.append(received)
        window = max(1, round(limits.min_rate_grace))
        if len(rates) > window:
            rates.popleft()
        if limits.min_receive_rate and len(rates) >= window and sum(rates) < limits.min_receive_rate * window:
            if self._starved:  # not the client's slowness: we stopped reading, the budget is full
                message = "the sidecar's receive budget had no room for this request's frames; retry shortly"
                self._cut(None, message, UNAVAILABLE)  # counted when reading stopped
            else:
                self._cut(Action.slow_body, f"the request arrives slower than {limits.min_receive_rate} bytes/s")
            return True
        if self._frame_since and tick - self._frame_since > limits.request_deadline:
            self._cut(Action.request_deadline, f"a frame did not arrive within {limits.request_deadline:g} s")
            return True
        return False

    def _outbound_stuck(self, tick: int) -> bool:
        """Whether the connection was closed: answers waiting for the client (for window, or in
        the socket) exceeded ``max_outbound_bytes`` for longer than ``min_rate_grace``."""
        assert self._transport is not None
        waiting = self._transport.get_write_buffer_size()
        for stream in self._blocked.values():
            waiting += len(stream.pending)
        if waiting <= self._limits.max_outbound_bytes:
            self._outbound_since = 0
            return False
        if not self._outbound_since:
            self._outbound_since = tick
        if tick - self._outbound_since <= self._limits.min_rate_grace:
            return False
        log.debug("HTTP/2 connection from %s aborted: %d answer bytes wait for it", self.address, waiting)
        self._server.count(Action.slow_body)
        self._dead = True
        self._transport.abort()
        return True

    @property
    def busy(self) -> bool:
        """Calls are in progress (being received, handled or answered)."""
        return bool(self._streams) and not self._dead


#: where a lingering connection's input is read to be dropped (the loop is one thread)
_DISCARD = memoryview(bytearray(16 << 10))

_OK_HEAD = header_block([(":status", "200"), ("content-type", CONTENT_TYPE)])
_OK_TRAILERS = header_block([("grpc-status", "0")])
