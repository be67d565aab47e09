"""A lean HTTP/2 client for unary calls: the OTLP/gRPC export path (RFC 9113, RFC 7541).

grpclib's client (h2, hyperframe, hpack in pure Python) spent about as much CPU per export as the
rest of sending it: a 200 kB message goes out as a dozen 16 kB DATA frames, each built and
accounted for by h2, and every WINDOW_UPDATE and PING the server sends back is parsed by it too.
Here a DATA frame is a 9-byte header written in front of a slice of the message, and the frames
that come back are read from one buffer.

What a client of unary calls needs, and nothing more:

- the preface and SETTINGS (push disabled, our windows), the server's SETTINGS acknowledged and
  applied (initial window, concurrent streams, frame size: a larger one once the server has
  answered a request sent after our acknowledgement), PING answered;
- flow control both ways: a request's DATA waits for the server's windows; a reply's bytes are
  acknowledged as they arrive, bounded by the caller's limit;
- header blocks sent as literals that never touch the server's HPACK table (split into
  CONTINUATION frames when long); answers decoded by ``hpack_decoder``, the server's decoder;
- GOAWAY: streams above its last id fail as unprocessed, the others finish, and the connection
  takes no new stream (:class:`Channel` opens another); RST_STREAM fails its stream;
- anything the server does wrong ends the connection with GOAWAY and fails its streams with
  :class:`ProtocolViolation`. Nothing raises into the event loop;
- a server gone without a FIN or a reset (its node lost, a partition, a connection tracker that
  forgot the flow) sends nothing at all: when a caller gives up on a request whose answer had not
  begun (no response headers), a PING asks whether anyone is there, and without a frame back
  within ``ping_timeout`` the connection is taken for dead (:class:`Unresponsive`) and the next
  request opens another. Connecting is bounded by ``connect_timeout`` the same way (a SYN
  nobody answers is retried by the kernel for two minutes).

A request is one HEADERS, its DATA and the END_STREAM flag; a response is its headers, its data
and its trailers (:class:`Response`), or the reason it has none.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ssl import SSLContext

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
    HEADERS,
    INITIAL_WINDOW_SIZE,
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
    U32,
    WINDOW_UPDATE,
    ConnectionFailure,
    frame,
)
from sidecar.wire.http2.hpack_decoder import Decoder, HeaderListTooLarge, HpackError

#: the window we give the server, per stream and for the connection: replies are small; a reply
#: larger than the caller's limit fails its stream long before the window matters
RECEIVE_WINDOW = 4 << 20
#: the largest header list (response headers or trailers) we accept, decoded
MAX_HEADER_LIST = 64 << 10
#: the most bytes one header block may span across HEADERS and CONTINUATION frames
MAX_HEADER_BLOCK = 2 * MAX_HEADER_LIST
#: answers to the server's control frames (PING, SETTINGS) we hold while it reads nothing
MAX_CONTROL_BACKLOG = 1 << 20
#: seconds a connection we ended for a violation keeps reading (and dropping) before it closes
LINGER = 1.0
#: what a server that answers in HTTP/1.x is told it is (the first bytes of an HTTP/2 server
#: are a SETTINGS frame)
HTTP1_ANSWER = ("the upstream answered in HTTP/1.1, not HTTP/2: it is not a gRPC endpoint (an OTLP/HTTP "
                "port such as 4318?); give its gRPC port (4317), or exporter.protocol = \"http/protobuf\" "
                "(OTEL_EXPORTER_OTLP_PROTOCOL)")
#: seconds a connection has to send any frame back after a PING it owes us an answer to
PING_TIMEOUT = 5.0
#: the PING we send to learn whether the server is still there
PROBE = frame(PING, 0, 0, b"liveness")
#: a stream id may not exceed 2^31 - 1; a connection that used them all is replaced
LAST_STREAM_ID = (1 << 31) - 1
#: the largest DATA frame we send when the server allows larger ones than 16 kB: fewer frames for
#: its parser, while one frame still leaves room for the other streams' frames
MAX_SEND_FRAME = 256 << 10
#: what the transport may hold of our own requests when a control answer is written: one DATA
#: frame past the high-water mark, and the header blocks of calls started meanwhile
SEND_ALLOWANCE = MAX_SEND_FRAME + (256 << 10)


class ConnectionClosed(ConnectionError):
    """The connection ended before the answer. ``unprocessed``: the server said it did not
    process the request (GOAWAY above it, REFUSED_STREAM), so sending it again is safe."""

    def __init__(self, message: str, *, unprocessed: bool = False) -> None:
        super().__init__(message)
        self.unprocessed = unprocessed


class Unresponsive(ConnectionClosed):
    """The server answered nothing, not even a PING, for ``ping_timeout`` seconds after a
    request was given up on: the connection was closed as dead."""


class StreamReset(ConnectionError):
    """The server reset the stream (RST_STREAM with ``code``)."""

    def __init__(self, code: int) -> None:
        super().__init__(f"the server reset the stream (HTTP/2 error {code})")
        self.code = code
        self.unprocessed = code == REFUSED_STREAM


class ProtocolViolation(Exception):
    """The server broke RFC 9113 or RFC 7541; the connection was ended with GOAWAY."""


class ReplyTooLarge(Exception):
    """The answer's data exceeded the caller's limit; the stream was cancelled."""


@dataclass(slots=True)
class Response:
    """A complete answer: headers (``:status`` included), data, trailers (empty when the answer
    ended with its headers or its data)."""

    headers: dict[str, str]
    data: bytes
    trailers: dict[str, str]


@dataclass(slots=True, eq=False)
class _Stream:
    id: int
    send_window: int
    limit: int
    done: asyncio.Future[Response]
    headers: dict[str, str] | None = None
    trailers: dict[str, str] = field(default_factory=dict)
    data: bytearray = field(default_factory=bytearray)
    unacknowledged: int = 0
    sent_all: bool = False


def _fields(pairs: Sequence[tuple[str, str]]) -> dict[str, str]:
    """Header fields by name; a repeated name's values joined with ", " (once: linear)."""
    values: dict[str, list[str]] = {}
    for name, value in pairs:
        values.setdefault(name, []).append(value)
    return {name: ", ".join(each) for name, each in values.items()}


class ClientConnection(asyncio.Protocol):
    """One HTTP/2 connection to a server, carrying concurrent unary requests."""

    def __init__(self, ping_timeout: float = PING_TIMEOUT, on_unresponsive: Callable[[], None] | None = None) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._ping_timeout = ping_timeout
        self._on_unresponsive = on_unresponsive
        #: the timer of the PING sent when a request the server said nothing about was given up on
        self._probe: asyncio.TimerHandle | None = None
        self._decoder = Decoder(MAX_HEADER_LIST, 4096)
        self._streams: dict[int, _Stream] = {}
        self._next_id = 1
        # the server's settings, as RFC 9113 6.5.2 defaults them until its SETTINGS arrive
        self._initial_window = DEFAULT_WINDOW
        self._max_streams = 1 << 31
        self._send_window = DEFAULT_WINDOW
        self._frame_size = MIN_FRAME_SIZE
        # a larger SETTINGS_MAX_FRAME_SIZE waits until the server answers a stream opened after
        # our ACK (h2, for one, applies it only from the read after the one that held the ACK):
        # (the size, the first stream id opened after the ACK)
        self._larger_frames: tuple[int, int] | None = None
        self._unacknowledged = 0
        # a header block arriving in HEADERS + CONTINUATION: (stream, flags, fragments, size)
        self._block: tuple[int, int, list[bytes], int] | None = None
        self._goaway: int | None = None
        self._error: BaseException | None = None
        self._waiters: list[asyncio.Future[None]] = []
        self._paused = False
        self._heard = False  # the server's first bytes were looked at

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        settings = SETTING.pack(ENABLE_PUSH, 0) + SETTING.pack(INITIAL_WINDOW_SIZE, RECEIVE_WINDOW)
        settings += SETTING.pack(MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST)
        transport.write(
            PREFACE + frame(SETTINGS, 0, 0, settings)
            + frame(WINDOW_UPDATE, 0, 0, U32.pack(RECEIVE_WINDOW - DEFAULT_WINDOW))
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_probe()
        if self._error is None:
            reason = f"the connection was lost: {exc}" if exc else "the server closed the connection"
            error = ConnectionClosed(reason)
            error.__cause__ = exc
            self._error = error
        self._fail_all(self._error)
        self._wake()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake()

    def data_received(self, data: bytes) -> None:
        if self._error is not None:
            return
        if self._probe is not None:
            self._stop_probe()  # the server is there
        self._buffer += data
        if not self._heard and len(self._buffer) >= 5:
            self._heard = True
            if self._buffer[:5] == b"HTTP/":  # the server speaks HTTP/1.x: say so, not "a frame of 4740180 bytes"
                self._abort(PROTOCOL_ERROR, HTTP1_ANSWER)
                return
        try:
            self._read_frames()
        except ConnectionFailure as failure:
            self._abort(failure.code, str(failure))

    # -- the caller's side ---------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """New requests may start here (no error, no GOAWAY, stream ids left)."""
        return self._error is None and self._goaway is None and self._next_id < LAST_STREAM_ID

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    async def request(self, header_block: bytes, body: bytes, limit: int) -> Response:
        """Send one request (its header block and body) and wait for the whole answer; raises
        ConnectionClosed, StreamReset, ProtocolViolation, ReplyTooLarge, or OSError."""
        # a full stream quota, or a server that reads nothing: wait (the caller's deadline applies)
        # rather than add one more header block to the transport's buffer
        while (len(self._streams) >= self._max_streams or self._paused) and self._error is None:
            await self._changed()
        if not self.available:
            raise self._error or ConnectionClosed("the connection takes no new requests", unprocessed=True)
        transport = self._transport
        assert transport is not None
        stream = _Stream(self._next_id, self._initial_window, limit, asyncio.get_running_loop().create_future())
        self._next_id += 2
        self._streams[stream.id] = stream
        try:
            self._send_headers(stream.id, header_block, end_stream=not body)
            if body:
                await self._send_data(stream, body)
            else:
                stream.sent_all = True
            return await stream.done
        finally:
            self._forget(stream)

    def close(self) -> None:
        """End the connection: GOAWAY, then close once the write buffer is flushed."""
        if self._error is None:
            self._error = ConnectionClosed("the connection was closed", unprocessed=True)
            if self._transport is not None:
                self._transport.write(frame(GOAWAY, 0, 0, GOAWAY_HEAD.pack(0, NO_ERROR)))
        self._stop_probe()
        self._fail_all(self._error)
        if self._transport is not None:
            self._transport.close()
            # a server that reads nothing would keep the socket (and what it holds) for ever
            asyncio.get_running_loop().call_later(LINGER, self._transport.abort)
        self._wake()

    # -- liveness ------------------------------------------------------------------------------

    def _check_alive(self) -> None:
        """Send a PING (one at a time): a server that is there answers it, and any frame it sends
        cancels the check; nothing within ``ping_timeout`` and the connection is dead."""
        if self._probe is not None or self._error is not None or self._transport is None:
            return
        self._transport.write(PROBE)
        self._probe = asyncio.get_running_loop().call_later(self._ping_timeout, self._unresponsive)

    def _stop_probe(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None

    def _unresponsive(self) -> None:
        self._probe = None
        if self._error is not None:
            return
        self._error = Unresponsive(
            f"the server sent nothing, not even a PING answer, within {self._ping_timeout:g} s "
            "after a request was given up on: the connection was closed as dead"
        )
        self._fail_all(self._error)
        if self._transport is not None:
            self._transport.abort()  # nobody is there to read a GOAWAY
        self._wake()
        if self._on_unresponsive is not None:
            self._on_unresponsive()

    # -- sending -----------------------------------------------------------------------------

    def _send_headers(self, stream_id: int, block: bytes, *, end_stream: bool) -> None:
        assert self._transport is not None
        flags = END_STREAM if end_stream else 0
        size = MIN_FRAME_SIZE
        if len(block) <= size:
            self._transport.write(frame(HEADERS, flags | END_HEADERS, stream_id, block))
            return
        chunks = [block[i : i + size] for i in range(0, len(block), size)]
        out = [frame(HEADERS, flags, stream_id, chunks[0])]
        out += [frame(CONTINUATION, 0, stream_id, chunk) for chunk in chunks[1:-1]]
        out.append(frame(CONTINUATION, END_HEADERS, stream_id, chunks[-1]))
        self._transport.write(b"".join(out))

    async def _send_data(self, stream: _Stream, body: bytes) -> None:
        view = memoryview(body)
        pos, end = 0, len(body)
        while pos < end:
            if self._error is not None:
                raise self._error
            if stream.done.done():  # the server answered (or reset) before taking it all
                return
            size = min(end - pos, self._send_window, stream.send_window, self._frame_size)
            if size <= 0 or self._paused:
                await self._changed()
                continue
            self._send_window -= size
            stream.send_window -= size
            last = pos + size == end
            transport = self._transport
            assert transport is not None
            transport.writelines((HEAD.pack(size >> 16, size & 0xFFFF, DATA, END_STREAM if last else 0, stream.id),
                                  view[pos : pos + size]))
            pos += size
        stream.sent_all = True

    async def _changed(self) -> None:
        """Wait until a window opens, the write buffer drains, a stream ends or the connection
        fails."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _forget(self, stream: _Stream) -> None:
        """The caller is done with ``stream``: cancel it on the wire if it is still open."""
        still_open = self._streams.pop(stream.id, None) is not None
        if still_open and self._error is None and self._transport is not None:
            # the caller gave up, or the server answered before taking the whole request
            self._transport.write(frame(RST_STREAM, 0, stream.id, U32.pack(CANCEL)))
            if stream.headers is None:
                self._check_alive()  # given up on, and the server said nothing about it
        if not stream.done.done():
            stream.done.cancel()
        elif not stream.done.cancelled():
            stream.done.exception()  # raised to the caller already, or superseded by its own error
        self._wake()
        if self._goaway is not None and not self._streams:
            self.close()

    # -- receiving ---------------------------------------------------------------------------

    def _read_frames(self) -> None:
        buffer = self._buffer
        pos, size = 0, len(buffer)
        try:
            while size - pos >= 9 and self._error is None:
                high, low, kind, flags, stream_id = HEAD.unpack_from(buffer, pos)
                length = high << 16 | low
                if length > MIN_FRAME_SIZE:  # we never raise SETTINGS_MAX_FRAME_SIZE
                    raise ConnectionFailure(FRAME_SIZE_ERROR, f"a frame of {length} bytes")
                if size - pos - 9 < length:
                    break
                payload = bytes(buffer[pos + 9 : pos + 9 + length])
                pos += 9 + length
                self._frame(kind, flags, stream_id & LAST_STREAM_ID, payload)
        finally:
            del buffer[:pos]

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._block is not None and (kind != CONTINUATION or stream_id != self._block[0]):
            raise ConnectionFailure(PROTOCOL_ERROR, "a header block was interrupted")
        if kind == DATA:
            self._data(flags, stream_id, payload)
        elif kind == HEADERS:
            self._headers_frame(flags, stream_id, payload)
        elif kind == CONTINUATION:
            self._continuation(flags, stream_id, payload)
        elif kind == WINDOW_UPDATE:
            self._window_update(stream_id, payload)
        elif kind == SETTINGS:
            self._settings(flags, stream_id, payload)
        elif kind == PING:
            if stream_id:
                raise ConnectionFailure(PROTOCOL_ERROR, "PING on a stream")
            if len(payload) != 8:
                raise ConnectionFailure(FRAME_SIZE_ERROR, "PING of a wrong size")
            if not flags & ACK:
                self._answer(frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            if not stream_id:
                raise ConnectionFailure(PROTOCOL_ERROR, "RST_STREAM on stream 0")
            if len(payload) != 4:
                raise ConnectionFailure(FRAME_SIZE_ERROR, "RST_STREAM of a wrong size")
            self._check_opened(stream_id)
            stream = self._streams.pop(stream_id, None)
            if stream is not None:
                self._settle(stream, StreamReset(U32.unpack(payload)[0]))
        elif kind == GOAWAY:
            self._goaway_frame(stream_id, payload)
        elif kind == PUSH_PROMISE:
            raise ConnectionFailure(PROTOCOL_ERROR, "PUSH_PROMISE with push disabled")
        elif kind == PRIORITY:
            if not stream_id:
                raise ConnectionFailure(PROTOCOL_ERROR, "PRIORITY on stream 0")
            if len(payload) != 5:
                raise ConnectionFailure(FRAME_SIZE_ERROR, "PRIORITY of a wrong size")
        # frames of unknown types are ignored (RFC 9113 4.1)

    def _answer(self, control: bytes) -> None:
        """Write the answer to a control frame, unless the server sends them faster than it reads."""
        transport = self._transport
        if transport is None:
            return
        if transport.get_write_buffer_size() > MAX_CONTROL_BACKLOG + SEND_ALLOWANCE:
            raise ConnectionFailure(ENHANCE_YOUR_CALM, "the server sends control frames and reads no answers")
        transport.write(control)

    def _check_opened(self, stream_id: int) -> None:
        """Server frames may only name streams we opened (odd ids we already used)."""
        if not stream_id & 1 or stream_id >= self._next_id:
            raise ConnectionFailure(PROTOCOL_ERROR, f"a frame on stream {stream_id}, which we never opened")

    @staticmethod
    def _unpad(flags: int, payload: bytes) -> bytes:
        if not flags & PADDED:
            return payload
        if not payload or payload[0] >= len(payload):
            raise ConnectionFailure(PROTOCOL_ERROR, "padding longer than the frame")
        return payload[1 : len(payload) - payload[0]]

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if not stream_id:
            raise ConnectionFailure(PROTOCOL_ERROR, "DATA on stream 0")
        self._check_opened(stream_id)
        # the whole frame counts against the windows, padding included (RFC 9113 6.9.1)
        self._unacknowledged += len(payload)
        if self._unacknowledged > RECEIVE_WINDOW:
            raise ConnectionFailure(FLOW_CONTROL_ERROR, "the server overran the connection window")
        if self._unacknowledged >= RECEIVE_WINDOW // 2 and self._transport is not None:
            self._transport.write(frame(WINDOW_UPDATE, 0, 0, U32.pack(self._unacknowledged)))
            self._unacknowledged = 0
        data = self._unpad(flags, payload)
        stream = self._streams.get(stream_id)
        if stream is None or stream.done.done():
            return  # a stream we cancelled: its bytes still count against the connection window
        if stream.headers is None:
            raise ConnectionFailure(PROTOCOL_ERROR, "DATA before the response headers")
        stream.unacknowledged += len(payload)
        if stream.unacknowledged > RECEIVE_WINDOW:
            raise ConnectionFailure(FLOW_CONTROL_ERROR, "the server overran a stream window")
        if len(stream.data) + len(data) > stream.limit:
            self._settle(stream, ReplyTooLarge(f"the answer exceeds {stream.limit} bytes"))
            return
        stream.data += data
        if flags & END_STREAM:
            self._complete(stream)
        elif stream.unacknowledged >= RECEIVE_WINDOW // 2 and self._transport is not None:
            self._transport.write(frame(WINDOW_UPDATE, 0, stream_id, U32.pack(stream.unacknowledged)))
            stream.unacknowledged = 0

    def _headers_frame(self, flags: int, stream_id: int, payload: bytes) -> None:
        if not stream_id:
            raise ConnectionFailure(PROTOCOL_ERROR, "HEADERS on stream 0")
        block = self._unpad(flags, payload)
        if flags & PRIORITY_FLAG:
            if len(block) < 5:
                raise ConnectionFailure(FRAME_SIZE_ERROR, "HEADERS too short for its priority")
            block = block[5:]
        if flags & END_HEADERS:
            self._header_block(stream_id, flags, block)
        else:
            self._block = (stream_id, flags, [block], len(block))

    def _continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        if self._block is None:
            raise ConnectionFailure(PROTOCOL_ERROR, "CONTINUATION without HEADERS")
        _, first_flags, fragments, size = self._block
        size += len(payload) + 9  # the frame header too: a flood of empty frames is bounded
        if size > MAX_HEADER_BLOCK:
            raise ConnectionFailure(ENHANCE_YOUR_CALM, "a header block too large")
        fragments.append(payload)
        self._block = (stream_id, first_flags, fragments, size)
        if flags & END_HEADERS:
            self._block = None
            self._header_block(stream_id, first_flags, b"".join(fragments))

    def _header_block(self, stream_id: int, flags: int, block: bytes) -> None:
        self._check_opened(stream_id)
        try:  # always decoded: the HPACK table must follow the server's
            fields = self._decoder.decode(block)
        except HeaderListTooLarge as exc:
            raise ConnectionFailure(ENHANCE_YOUR_CALM, str(exc)) from None
        except HpackError as exc:
            raise ConnectionFailure(COMPRESSION_ERROR, str(exc)) from None
        stream = self._streams.get(stream_id)
        if stream is None or stream.done.done():
            return
        end = bool(flags & END_STREAM)
        if stream.headers is None:
            status = next((value for name, value in fields if name == ":status"), "")
            if status.startswith("1") and not end:
                return  # informational (1xx): the real headers follow
            headers = _fields(fields)
            stream.headers = headers
        elif end:
            stream.trailers = _fields(fields)
        else:
            raise ConnectionFailure(PROTOCOL_ERROR, "a second header block without END_STREAM")
        if end:
            self._complete(stream)

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ConnectionFailure(FRAME_SIZE_ERROR, "WINDOW_UPDATE of a wrong size")
        increment = U32.unpack(payload)[0] & LAST_STREAM_ID
        if not stream_id:
            if not increment:
                raise ConnectionFailure(PROTOCOL_ERROR, "a connection WINDOW_UPDATE of 0")
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                raise ConnectionFailure(FLOW_CONTROL_ERROR, "the connection window overflowed")
        else:
            self._check_opened(stream_id)
            stream = self._streams.get(stream_id)
            if stream is None:
                return
            stream.send_window += increment
            if not increment or stream.send_window > MAX_WINDOW:
                self._reset(stream, PROTOCOL_ERROR if not increment else FLOW_CONTROL_ERROR,
                            "the server sent a bad stream WINDOW_UPDATE")
        self._wake()

    def _settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise ConnectionFailure(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise ConnectionFailure(FRAME_SIZE_ERROR, "a SETTINGS acknowledgement with a payload")
            return
        if len(payload) % 6:
            raise ConnectionFailure(FRAME_SIZE_ERROR, "SETTINGS of a wrong size")
        initial_window = self._initial_window
        for i in range(0, len(payload), 6):
            key, value = SETTING.unpack_from(payload, i)
            if key == ENABLE_PUSH and value != 0:
                raise ConnectionFailure(PROTOCOL_ERROR, "a server may not enable push")
            if key == INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ConnectionFailure(FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE too large")
                initial_window = value  # applied once, below: the last value of the frame counts
            elif key == MAX_FRAME_SIZE:
                if not MIN_FRAME_SIZE <= value < 1 << 24:
                    raise ConnectionFailure(PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE out of range")
                value = min(value, MAX_SEND_FRAME)
                if value <= self._frame_size:  # smaller: at once
                    self._frame_size, self._larger_frames = value, None
                else:  # larger: from the first answer to a stream opened after this ACK
                    self._larger_frames = (value, self._next_id)
            elif key == MAX_CONCURRENT_STREAMS:
                self._max_streams = value
            # the table size is the encoder's limit, and we never index; the rest is advisory
        if initial_window != self._initial_window:
            delta, self._initial_window = initial_window - self._initial_window, initial_window
            for stream in self._streams.values():
                stream.send_window += delta
                if stream.send_window > MAX_WINDOW:
                    raise ConnectionFailure(FLOW_CONTROL_ERROR, "a stream window overflowed")
        self._answer(frame(SETTINGS, ACK, 0))
        self._wake()

    def _goaway_frame(self, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise ConnectionFailure(PROTOCOL_ERROR, "GOAWAY on a stream")
        if len(payload) < 8:
            raise ConnectionFailure(FRAME_SIZE_ERROR, "GOAWAY too short")
        last, code = GOAWAY_HEAD.unpack_from(payload)
        last &= LAST_STREAM_ID
        self._goaway = last if self._goaway is None else min(last, self._goaway)
        for stream in [s for s in self._streams.values() if s.id > last]:
            del self._streams[stream.id]
            self._settle(stream, ConnectionClosed(f"the server is going away (HTTP/2 error {code})",
                                                  unprocessed=True))
        if not self._streams:
            self.close()
        self._wake()

    # -- endings -----------------------------------------------------------------------------

    def _complete(self, stream: _Stream) -> None:
        if self._larger_frames is not None and stream.id >= self._larger_frames[1]:
            self._frame_size, self._larger_frames = self._larger_frames[0], None
        if not stream.done.done():
            stream.done.set_result(Response(stream.headers or {}, bytes(stream.data), stream.trailers))
        if stream.sent_all:
            self._streams.pop(stream.id, None)
        self._wake()

    def _settle(self, stream: _Stream, error: BaseException) -> None:
        if not stream.done.done():
            stream.done.set_exception(error)
        self._wake()

    def _reset(self, stream: _Stream, code: int, message: str) -> None:
        self._streams.pop(stream.id, None)
        if self._transport is not None:
            self._transport.write(frame(RST_STREAM, 0, stream.id, U32.pack(code)))
        self._settle(stream, ProtocolViolation(message))

    def _fail_all(self, error: BaseException) -> None:
        streams = list(self._streams.values())
        self._streams.clear()
        for stream in streams:
            self._settle(stream, error)

    def _abort(self, code: int, message: str) -> None:
        """End the connection for a violation: GOAWAY, then what the server still sends is read
        and dropped for LINGER seconds before the socket closes (closing on unread bytes would
        answer with a TCP reset, which can destroy the GOAWAY before the server reads it)."""
        self._error = ProtocolViolation(message)
        transport = self._transport
        if transport is not None:
            transport.write(frame(GOAWAY, 0, 0, GOAWAY_HEAD.pack(0, code) + message.encode()[:256]))
            # abort, not close: close waits for the write buffer to drain, which a server that
            # reads nothing never lets happen
            asyncio.get_running_loop().call_later(LINGER, transport.abort)
        self._fail_all(self._error)
        self._wake()


class Channel:
    """Requests to one server over one connection at a time: opened on first use, replaced
    when it fails or the server sends GOAWAY (calls in flight finish on the old one)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ssl: SSLContext | None = None,
        server_hostname: str | None = None,
        connect_timeout: float = 10.0,
        ping_timeout: float = PING_TIMEOUT,
        on_unresponsive: Callable[[], None] | None = None,
    ) -> None:
        """``connect_timeout``: seconds to connect (and shake hands); ``ping_timeout``: seconds a
        silent connection has to answer a PING (see the module's text); ``on_unresponsive``:
        called each time a connection is closed as dead."""
        self.host, self.port = host, port
        self._connect_timeout = connect_timeout
        self._ping_timeout = ping_timeout
        self._on_unresponsive = on_unresponsive
        self._ssl = ssl
        self._server_hostname = server_hostname
        self.scheme = "https" if ssl is not None else "http"
        self.authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._connection: ClientConnection | None = None
        self._connecting: asyncio.Future[ClientConnection] | None = None
        self._all: set[ClientConnection] = set()
        self._closed = False

    async def request(self, header_block: bytes, body: bytes, limit: int) -> Response:
        """One request on the current connection (see :meth:`ClientConnection.request`)."""
        connection = await self.connection()
        return await connection.request(header_block, body, limit)

    async def connection(self) -> ClientConnection:
        if self._closed:
            raise ConnectionClosed("the channel is closed")
        current = self._connection
        if current is not None and current.available:
            return current
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
            self._connecting.add_done_callback(self._connected)
        # shielded: one caller's timeout does not abandon the others' connection attempt
        return await asyncio.shield(self._connecting)

    def _connected(self, attempt: asyncio.Future[ClientConnection]) -> None:
        self._connecting = None
        if not attempt.cancelled() and attempt.exception() is None:
            self._connection = attempt.result()

    async def _connect(self) -> ClientConnection:
        loop = asyncio.get_running_loop()
        server_hostname = (self._server_hostname or self.host) if self._ssl is not None else None
        try:
            async with asyncio.timeout(self._connect_timeout):
                transport, connection = await loop.create_connection(
                    lambda: ClientConnection(self._ping_timeout, self._on_unresponsive), self.host, self.port,
                    ssl=self._ssl, server_hostname=server_hostname,
                )
        except TimeoutError:
            raise ConnectionClosed(
                f"no connection to {self.authority} within {self._connect_timeout:g} s", unprocessed=True
            ) from None
        if self._ssl is not None:
            # a server without ALPN gets HTTP/2 by prior knowledge, as gRPC clients do; one that
            # chose another protocol would read our frames as garbage
            chosen = transport.get_extra_info("ssl_object").selected_alpn_protocol()
            if chosen not in (None, "h2"):
                transport.close()
                raise ConnectionClosed(f"the server chose {chosen} in TLS (ALPN), not HTTP/2")
        if self._closed:
            connection.close()
            raise ConnectionClosed("the channel is closed")
        self._all = {c for c in self._all if c.available or c.open_streams}
        self._all.add(connection)
        return connection

    def close(self) -> None:
        """Close every connection; calls in flight fail with ConnectionClosed."""
        self._closed = True
        for connection in self._all:
            connection.close()
        self._all.clear()
        self._connection = None

