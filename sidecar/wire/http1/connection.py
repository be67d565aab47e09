"""One HTTP/1.1 client connection: parse, hand over, answer, in order (see the package docstring)."""

from __future__ import annotations

import asyncio
import logging
import math
from typing import TYPE_CHECKING

from sidecar.overload.budget import Account
from sidecar.overload.memory import MMAP_THRESHOLD
from sidecar.overload.reasons import Action
from sidecar.wire.http1.buffers import (
    _DISCARD,
    _DISCARD_VIEW,
    _EMPTY,
    _EMPTY_VIEW,
    _GROW,
    _HEAD_READ,
    _HEAD_ROOM,
    _MIN_FREE,
)
from sidecar.wire.http1.messages import HttpError, Request, Response, plain, serialize
from sidecar.wire.http1.parser import _chunk_size, _trailer, parse_head

if TYPE_CHECKING:
    from sidecar.wire.http1.server import Http1Server

log = logging.getLogger("sidecar.http")

# -- connection states ---------------------------------------------------------------------------

_IDLE = 0  # between requests (keep-alive)
_HEAD = 1  # receiving a request line and headers
_BODY = 2  # receiving a Content-Length body
_CHUNKED = 3  # receiving a chunked body
_HANDLING = 4  # the handler runs; input is read ahead up to a bound
_LINGER = 5  # answered and closing: input is discarded
_CLOSED = 6

# chunked body parts
_SIZE, _DATA, _DATA_END, _TRAILERS = range(4)

#: what a timeout in each state is counted as
_TIMEOUT_ACTIONS = {_IDLE: Action.idle_timeout, _HEAD: Action.header_timeout, _BODY: Action.slow_body,
                    _CHUNKED: Action.slow_body, _HANDLING: Action.slow_body}

#: seconds a new connection cannot be evicted at the connection cap (its first read comes first)
_EVICT_GRACE = 0.01
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_INF = math.inf
#: over TLS, bytes of an answer handed to the transport at once, and the TLS transport's high-water
#: mark. asyncio's TLS layer encrypts what it is given at once into a buffer that keeps its largest
#: size for the connection's life (OpenSSL's memory BIO: 1.4 MB after one 1.4 MB answer), and hands
#: it all to the TCP transport below, where an answer the client does not read waits without
#: pausing this protocol (the TLS layer pauses it only once its own buffer, behind the paused TCP
#: transport, reaches its mark: 512 KiB by default). Given a slice at a time, it pauses this
#: protocol once a slice waits behind the TCP transport's 64 KiB: what a client that reads nothing
#: leaves in the transports is about 200 KiB, the write-pause timeout applies, and the rest of the
#: answer waits here, in the one object it already is.
_TLS_SLICE = 64 * 1024


class _Connection(asyncio.BufferedProtocol):
    """One client connection: parse, hand over, answer, in order."""

    def __init__(self, server: Http1Server) -> None:
        self._server = server
        self._limits = server.limits
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._tls = False
        #: the rest of an answer not yet handed to a TLS transport (while writing is paused)
        self._unsent: memoryview | None = None
        # the buffer of this connection (allocated on the first read, dropped when idle), or a
        # larger one (pooled or grown) while a large body arrives
        self._own: bytearray | None = None
        #: the own buffer's size, counted in the server's ``own_bytes`` while it exists (0: a small one)
        self._own_counted = 0
        self._buf = _EMPTY
        self._view = _EMPTY_VIEW
        self._pos = 0  # the next byte to parse
        self._end = 0  # the end of what was received
        self._scan = 0  # where the search for the end of an incomplete line or head resumes
        self._line_seen = False  # the request line of an incomplete head is complete
        self._state = _IDLE
        #: when the current phase times out (loop time)
        self.deadline = _INF
        #: since when writing is paused (loop time; 0 while not)
        self.write_paused_at = 0.0
        #: since when the connection has waited for a request, or for the rest of its head
        self.waiting_since = 0.0
        self._read_paused = False
        self._eof = False
        self._shutdown = False
        self._request: Request | None = None
        # the body being received: [_body_start, _decoded_end) holds the decoded part
        self._length = 0
        self._body_start = -1
        self._decoded_end = 0
        self._part = _SIZE
        self._chunk_left = 0
        self._overhead = 0
        self._trailer_bytes = 0
        self._trailers = 0
        #: when the body being received must be complete (loop time)
        self._body_until = _INF
        # budget bytes taken for the body being received, and for the one the handler holds
        self._reserved = 0
        #: of ``_reserved``, room of a grown body buffer taken before bytes arrived in it
        self._prepaid = 0
        self._held = 0
        #: this connection's account of the receive budget (bytes are taken as they arrive)
        self._account: Account | None = None
        #: bytes read ahead while a request is handled, taken from the account until it is done
        self._ahead = 0
        #: when the body being received started (loop time) and its bytes received so far
        self._body_started = 0.0
        self._body_received = 0
        # the grown buffer a body was handed over in, until its handler is done
        self._lent: bytearray | None = None

    # -- asyncio protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        server = self._server
        cap = self._limits.max_connections
        if cap and len(server._connections) >= cap and not server.evict() and len(server._connections) >= 2 * cap:
            # far over the listener's cap, every connection busy or just accepted: closed at once
            self._state = _CLOSED
            server.count(Action.connection_limit)
            transport.abort()
            return
        self._tls = transport.get_extra_info("ssl_object") is not None
        if self._tls:
            transport.set_write_buffer_limits(high=_TLS_SLICE)
        server._connections.add(self)
        if server.budget is not None:
            self._account = server.budget.account()
        self._enter_idle()
        if self._server.closing:
            self._close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._state = _CLOSED
        self.deadline = _INF
        self.write_paused_at = 0.0
        self._unsent = None
        # asyncio's TLS protocol keeps bound methods of this protocol after the loss, and the
        # transport keeps it: a cycle only the full collector frees, with 256 KiB of TLS buffers
        # in it (500 closed TLS connections held 100 MiB). Without the transport it is freed now.
        self._transport = None
        self._release()
        self._drop_own()
        if self._account is not None and not self._held:
            self._account.close()  # with a handler running, its bytes go back when it is done
        self._server._forget(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        state = self._state
        if state == _BODY:
            need = self._body_start + self._length - self._end
        elif state == _CHUNKED and self._part == _DATA:
            need = self._chunk_left
        elif state >= _LINGER:  # input is discarded
            self._pos = self._end = 0
            if not self._buf:
                self._reserve(_MIN_FREE, amortize=True)
            return self._view
        else:
            if len(self._buf) - self._end < _MIN_FREE:
                self._reserve(_MIN_FREE, amortize=True)
            # a head is read in small steps: what comes after it (the start of a body larger
            # than the buffer) would be copied once more into the body's own buffer
            return self._view[self._end : self._end + _HEAD_READ]
        if len(self._buf) - self._end < need:
            if need > _MIN_FREE:  # the rest of a body or chunk
                self._room_for_body(need)
                if self._state >= _LINGER:  # refused for want of room in the budget: input is discarded
                    return self.get_buffer(sizehint)
            else:
                self._reserve(need, amortize=state != _BODY)
        return self._view[self._end:]

    def buffer_updated(self, nbytes: int) -> None:
        state = self._state
        if state in (_LINGER, _CLOSED):
            self._pos = self._end = 0
            return
        self._end += nbytes
        if state in (_BODY, _CHUNKED):
            deadline = self._loop.time() + self._limits.body_timeout
            self.deadline = deadline if deadline < self._body_until else self._body_until
            self._body_received += nbytes
            prepaid = self._prepaid
            if prepaid:  # arrived in room taken when the buffer grew
                paid = nbytes if nbytes < prepaid else prepaid
                self._prepaid = prepaid - paid
                if nbytes > paid and not self._take_budget(nbytes - paid):
                    return
            elif not self._take_budget(nbytes):
                return
        elif state == _HANDLING and self._account is not None:
            # read ahead of a request being handled: held too, until the handler is done
            if self._account.take(nbytes):
                self._ahead += nbytes
            elif not self._read_paused:
                self._read_paused = True  # no room: TCP holds the rest
                self._transport.pause_reading()  # type: ignore[union-attr]  # set before any byte arrives
        self._process()

    def data_received(self, data: bytes) -> None:
        """Input from a transport that does not fill our buffer (the TLS acceptor, before it
        hands the connection over)."""
        if self._state in (_LINGER, _CLOSED):
            return
        size = len(data)
        if len(self._buf) - self._end < size:
            self._reserve(size, amortize=self._state != _BODY)
        self._view[self._end:self._end + size] = data
        self.buffer_updated(size)

    def eof_received(self) -> bool | None:
        self._eof = True
        if self._tls:
            # asyncio's TLS closes on the client's EOF: answers could no longer be sent (each
            # write would draw a warning), so requests not yet answered are dropped
            self._close()
            return None
        if self._state == _LINGER:
            self._close()
        else:
            self._process()
        return True  # keep a half-closed TCP connection open to answer what was sent

    def pause_writing(self) -> None:
        self.write_paused_at = self._loop.time()
        # a client that does not take its answers sends no more meanwhile: what it sends waits
        # in TCP, not in this connection's buffer (read ahead of an unparsed head is in no account)
        if not self._read_paused and self._state != _CLOSED and self._transport is not None:
            self._read_paused = True
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused_at = 0.0
        if self._unsent is not None:
            self._send_slices(self._unsent)
            if self._unsent is not None:
                return  # paused again
            if self._shutdown and self._state == _IDLE:
                self._close()
                return
        if self._state == _IDLE:
            self.deadline = self._loop.time() + self._limits.idle_timeout
        self._process()

    # -- called by the server ------------------------------------------------------------------

    def timed_out(self) -> None:
        """A deadline passed: a body past its deadline is answered 408, else close without an answer."""
        state = self._state
        if state == _CLOSED:
            return
        if state in (_BODY, _CHUNKED) and self._loop.time() >= self._body_until and not self.write_paused_at:
            self.too_slow(Action.request_deadline)
            return
        action = _TIMEOUT_ACTIONS.get(state)
        if action is not None:
            self._server.count(action)
        log.debug("closing an HTTP connection: timeout in state %d", state)
        self._state = _CLOSED
        self.deadline = _INF
        self._unsent = None
        self._release()
        transport = self._transport
        if transport is not None:
            if self.write_paused_at or transport.get_write_buffer_size():
                transport.abort()
            else:
                transport.close()

    def too_slow(self, action: Action) -> None:
        """The body being received is too slow (``min_receive_rate``) or late (``body_deadline``):
        answer 408 and close."""
        self._server.count(action)
        if action is Action.slow_body:
            message = (f"request body arrived slower than {self._limits.min_receive_rate} bytes/s "
                       f"({self._body_received} bytes in {self._loop.time() - self._body_started:.0f} s)")
        else:
            message = f"request body not received within {self._limits.body_deadline:g} s"
        self._refuse_late(408, message)

    def waiting(self) -> bool:
        """Between requests, or sending a head: nothing of it is being handled."""
        return self._state <= _HEAD

    def closing(self) -> bool:
        """Closed by the server, its transport not yet gone (TLS waits for the client's close_notify)."""
        return self._state == _CLOSED

    def receive_rate_low(self, now: float) -> bool:
        """Is a body arriving slower than ``min_receive_rate``, past the grace?"""
        rate = self._limits.min_receive_rate
        if not rate or self._state not in (_BODY, _CHUNKED):
            return False
        elapsed = now - self._body_started
        return elapsed > self._limits.min_rate_grace and self._body_received < rate * elapsed

    def idle_since(self) -> float | None:
        """Since when the connection has waited for a request with nothing buffered, or None."""
        if self._state != _IDLE or self._end or self.write_paused_at:
            return None
        return self.deadline - self._limits.idle_timeout

    def shrink(self) -> None:
        """Drop the buffers (called while idle with nothing buffered): a grown one goes back to
        the pool, the connection's own one is allocated again on the next read."""
        if self._end == 0 and self._buf is not _EMPTY:
            self._give_back()
            self._drop_own()
            self._buf = _EMPTY
            self._view = _EMPTY_VIEW

    def _lend(self, start: int, stop: int) -> memoryview:
        """The body in place, not copied: the grown buffer that ends with it goes to the handler
        too (to the pool once the handler is done), and the connection goes on in its own buffer."""
        body = self._view[start:stop]
        self._lent = self._buf
        self._buf = own = self._own if self._own is not None else _EMPTY
        self._view = memoryview(own)
        self._pos = self._end = self._scan = 0
        return body

    def _give_back(self) -> None:
        """Return a grown buffer to the server's pool once nothing in it is needed any more."""
        buf = self._buf
        if buf is not self._own and buf is not _EMPTY and buf is not _DISCARD:
            self._server.buffers.put(buf)
            self._buf = own = self._own if self._own is not None else _EMPTY
            self._view = memoryview(own)
            self._pos = self._end = self._scan = 0

    def shut_down(self) -> None:
        """The server closes: close now if idle, else after answering the request in progress."""
        self._shutdown = True
        if self._state == _IDLE and self._pos == self._end and self._unsent is None:
            self._close()

    def abort(self) -> None:
        self._state = _CLOSED
        self._unsent = None
        self._release()
        if self._transport is not None:
            self._transport.abort()

    # -- the buffer -----------------------------------------------------------------------------

    def _room_for_body(self, need: int) -> None:
        """Room for the rest of a body (or of a chunk), ``need`` bytes, of which fewer are free.
        A pooled buffer that holds it all is taken at once (its memory is committed already);
        else the free space is read into first, then the buffer grows by at most max(_GROW,
        twice the body received so far): memory follows the bytes that arrive, not the size
        a client declares."""
        keep = self._body_start if self._body_start >= 0 else self._pos
        live = self._end - keep
        if live + need > len(self._buf):
            pooled = self._server.buffers.take(live + need + _HEAD_ROOM)
            if pooled is not None:
                self._move(pooled, keep, live)
                return
            if len(self._buf) - self._end >= _MIN_FREE:
                return
            received = self._end - self._body_start if self._body_start >= 0 else 0
            step = min(need, max(_GROW, 2 * received))
            if live + step + _HEAD_ROOM < MMAP_THRESHOLD <= live + need + _HEAD_ROOM:
                # a body that will outgrow the heap's sizes skips them: a buffer of the mmap
                # threshold or more is the system's again when freed, while heap ones stay resident
                # (500 connections refused after their first step left 15 MiB in the heap)
                step = MMAP_THRESHOLD - live - _HEAD_ROOM
            need = self._prepay(step)
            if not need:
                return  # refused: the room is not in the budget
        self._reserve(need, amortize=self._state != _BODY)

    def _prepay(self, need: int) -> int:
        """Take the room a body's buffer is about to grow by from the account before it is
        allocated, so the budget counts what the buffer holds, not only the bytes that arrived
        (growth by twice what arrived held three times the budget: 20 TLS connections, 200 MiB).
        The room to grow by: ``need``, or 64 KiB when only that fits; 0 when not even that fits
        (the request is refused, as the bytes would be)."""
        account = self._account
        if account is None or need <= self._prepaid:
            return need
        for room in (need, min(need, _GROW)):
            extra = room - self._prepaid
            if extra <= 0 or account.take_room(extra):
                if extra > 0:
                    self._prepaid += extra
                    self._reserved += extra
                return room
        if self._take_budget(need - self._prepaid):  # refused (counted, answered); it cannot fit here
            self._prepaid = need
            return need
        return 0

    def _reserve(self, need: int, *, amortize: bool) -> None:
        """Room for ``need`` more bytes after ``_end``: move what is still needed to the front of
        the buffer, or into a larger one: with ``need`` to spare (and room for the next head),
        or when ``amortize`` (growth of unknown extent) at least twice what it holds."""
        keep = self._body_start if self._body_start >= 0 else self._pos
        live = self._end - keep
        if live + need <= len(self._buf):
            if live:
                self._view[:live] = self._view[keep:self._end]  # memoryview: an overlap-safe memmove
            self._shift(keep)
            return
        size = self._limits.buffer_size
        own = self._own
        if live + need <= (size if own is None else len(own)):  # no buffer yet, or the own one has room
            new = self._own = own if own is not None else self._new_own(size, live + need)
        else:
            # room for the head of the next request too, so a connection sending bodies of one
            # size settles on one buffer and never moves a body
            wanted = max(live + need + _HEAD_ROOM, 2 * live if amortize else 0)
            new = self._server.buffers.take(wanted) or bytearray(wanted)
        self._move(new, keep, live)

    def _new_own(self, size: int, least: int) -> bytearray:
        """The connection's own buffer: ``size`` bytes while the server's own buffers together stay
        within ``own_buffer_bytes``, else ``_HEAD_READ`` (or ``least``, if more): reads are smaller,
        nothing else changes (500 connections reading heads at once held 31 MiB of own buffers)."""
        server = self._server
        if server.own_bytes + size <= self._limits.own_buffer_bytes:
            server.own_bytes += size
            self._own_counted = size
            return bytearray(size)
        server.count(Action.small_buffer)
        return bytearray(max(_HEAD_READ, least))

    def _drop_own(self) -> None:
        """Drop the connection's own buffer (counted out of the server's ``own_bytes``)."""
        self._own = None
        if self._own_counted:
            self._server.own_bytes -= self._own_counted
            self._own_counted = 0

    def _move(self, new: bytearray, keep: int, live: int) -> None:
        """Continue in ``new`` with the ``live`` bytes from ``keep`` on; a grown buffer left goes
        back to the pool."""
        view = memoryview(new)
        view[:live] = self._view[keep:self._end]  # view to view: one copy (a bytearray slice makes two)
        old = self._buf
        if old is not self._own and old is not _EMPTY:
            self._server.buffers.put(old)
        self._buf = new
        self._view = view
        self._shift(keep)

    def _shift(self, keep: int) -> None:
        """The buffer's content moved down by ``keep`` bytes."""
        self._pos -= keep
        self._end -= keep
        self._scan = max(0, self._scan - keep)
        if self._body_start >= 0:
            self._body_start -= keep
            self._decoded_end -= keep

    # -- parsing ---------------------------------------------------------------------------------

    def _process(self) -> None:
        """Parse and hand over what the buffer holds, in order, as far as possible."""
        try:
            while not self.write_paused_at:
                state = self._state
                if state in (_IDLE, _HEAD):
                    if not self._parse_head():
                        break
                elif state == _BODY:
                    start = self._body_start
                    stop = start + self._length
                    if self._end < stop:
                        break
                    self._pos = stop
                    self._body_start = -1
                    # a body in a grown buffer that nothing follows is lent; else it is copied
                    # (the connection's own buffer, or pipelined input after it, stays in use)
                    if stop != self._end or self._buf is self._own:
                        body: bytes | memoryview = bytes(self._view[start:stop])
                    else:
                        body = self._lend(start, stop)
                    self._dispatch(body)
                elif state == _CHUNKED:
                    if not self._parse_chunked():
                        break
                else:
                    break
        except HttpError as exc:
            self._request = None
            self._server.count(Action.malformed_request)
            self._answer(plain(exc.status, exc.message), body_read=False)
            return
        state = self._state
        if self._pos == self._end and self._body_start < 0:
            self._pos = self._end = self._scan = 0
        if state == _HANDLING or self.write_paused_at:
            if not self._read_paused and self._end - self._pos >= self._limits.read_ahead:
                self._read_paused = True
                self._transport.pause_reading()  # type: ignore[union-attr]  # set by connection_made
        elif self._read_paused and state != _CLOSED:
            self._read_paused = False
            self._transport.resume_reading()  # type: ignore[union-attr]  # set by connection_made
        if self._eof and state <= _CHUNKED and self._unsent is None:
            self._close()  # the client sends no more, and nothing is left to answer

    def _parse_head(self) -> bool:
        """Take a request line and header section if complete; False when more is needed."""
        buf, end = self._buf, self._end
        pos = self._pos
        while buf.startswith(b"\r\n", pos, end):  # empty lines before a request line (RFC 9112 2.2)
            pos += 2
        self._pos = pos
        if pos == end:
            return False
        head_end = buf.find(b"\r\n\r\n", max(pos, self._scan - 3), end)
        if head_end < 0:
            self._head_incomplete(pos, end)
            return False
        self._scan = 0
        self._line_seen = False
        if head_end + 4 - pos > self._limits.max_header_bytes:
            if buf.find(b"\r\n", pos, head_end + 2) - pos > self._limits.max_request_line:
                raise HttpError(414, "request line too long")
            raise HttpError(431, "request header section too large")
        head = bytes(self._view[pos:head_end])
        self._pos = head_end + 4
        self._start_request(head)
        return True

    def _head_incomplete(self, pos: int, end: int) -> None:
        """Enforce the head's limits before it is complete, and refuse a bare LF early. Each byte
        is looked at once however the head is split."""
        buf, limits = self._buf, self._limits
        scan = max(pos, self._scan)
        if self._state == _IDLE:
            self._state = _HEAD
            self.deadline = self._loop.time() + limits.header_timeout
        if buf.count(b"\n", scan, end) != buf.count(b"\r\n", max(pos, scan - 1), end):
            raise HttpError(400, "bare LF in the request head")
        if not self._line_seen:
            eol = buf.find(b"\r\n", max(pos, scan - 1), end)
            self._line_seen = eol >= 0
            if (eol if eol >= 0 else end) - pos > limits.max_request_line:
                raise HttpError(414, "request line too long")
        if end - pos > limits.max_header_bytes:
            raise HttpError(431, "request header section too large")
        self._scan = end

    def _start_request(self, head: bytes) -> None:
        """Parse a head (without its final CRLFCRLF), then decide how to read the body."""
        limits = self._limits
        transport = self._transport
        assert transport is not None
        request = parse_head(head, limits, transport)
        request.account = self._account
        http10 = request.version == "HTTP/1.0"
        headers = request.headers
        cl = headers.get("content-length")
        length = request.content_length or 0
        self._request = request
        has_body = request.chunked or length > 0
        expect = headers.get("expect") if not http10 else None  # HTTP/1.0: ignored (RFC 9110 10.1.1)
        if expect is not None and expect.lower() != "100-continue":
            self._server.count(Action.malformed_request)
            self._refuse_late(417, f"unsupported expectation {expect!r}")
            return
        # the early checks: the application's (path, method, media type, peer ...), then the size
        refusal = self._check(request)
        if refusal is not None:
            self._answer(refusal, body_read=not has_body)
            return
        if length > limits.max_request_bytes:
            size = (cl or "").lstrip("0")
            self._server.count(Action.request_too_large)
            self._refuse_late(413, f"body of {size} bytes exceeds the limit of {limits.max_request_bytes} bytes")
            return
        account = self._account
        if account is not None and length > account.share:
            # the budget is taken as bytes arrive, never from a declared size; a body that one
            # connection could never hold is refused now
            self._server.count(Action.request_too_large)
            self._refuse_late(413, f"body of {length} bytes exceeds the {account.share} bytes one connection may hold")
            return
        if not has_body:
            self._dispatch(b"")
            return
        if length and not self._fits(length):
            return
        if expect is not None and self._pos == self._end:
            self._transport.write(_CONTINUE)  # type: ignore[union-attr]  # set by connection_made
        if request.chunked:
            self._state = _CHUNKED
            self._part = _SIZE
            self._decoded_end = 0
            self._overhead = self._trailer_bytes = self._trailers = 0
        else:
            self._state = _BODY
            self._body_start = self._pos
            self._length = length
        now = self._loop.time()
        self._body_started = now
        self._body_received = self._end - self._pos  # what arrived with the head
        if not self._take_budget(self._body_received):
            return
        self._body_until = now + limits.body_deadline
        self.deadline = min(now + limits.body_timeout, self._body_until)

    def _take_budget(self, size: int) -> bool:
        """Take ``size`` bytes that just arrived for the body being received from the connection's
        account; when they do not fit, refuse the request and False: 413 when the body alone is
        more than a connection may hold, else 503 (retryable: the budget is short now)."""
        account = self._account
        if account is None:
            return True
        if account.take(size):
            self._reserved += size
            return True
        action = account.refused or Action.budget_full
        self._server.count(action)
        if action is Action.connection_share and self._body_received > account.share:
            self._refuse_late(413, f"body exceeds the {account.share} bytes one connection may hold")
        else:
            self._refuse_late(503, account.message())
        return False

    def _fits(self, size: int) -> bool:
        """Would a declared size fit the budget now? Checked, not reserved (bytes are taken as
        they arrive); when not, refuse at once (503, before ``100 Continue``) and False."""
        account = self._account
        if account is None or size <= 0 or account.fits(size):
            return True
        action = account.refused or Action.budget_full
        self._server.count(action)
        self._refuse_late(503, account.message())
        return False

    def _release(self) -> None:
        """Give back the budget of a body being received (it was abandoned, or refused)."""
        if self._reserved:
            self._account.give(self._reserved)  # type: ignore[union-attr]  # reserved only from an account
            self._reserved = 0
        self._prepaid = 0

    def _check(self, request: Request) -> Response | None:
        check = self._server.check
        if check is None:
            return None
        try:
            return check(request)
        except Exception:
            log.exception("the HTTP check failed on %s %s", request.method, request.path)
            return plain(500, "internal error")

    def _parse_chunked(self) -> bool:
        """Decode chunks in place: the data of later chunks moves down to follow the first
        chunk's. True once the body was handed over (or refused), False when more is needed."""
        buf, view, end = self._buf, self._view, self._end
        limits = self._limits
        pos = self._pos
        while True:
            part = self._part
            if part == _DATA:
                size = min(self._chunk_left, end - pos)
                if size == 0:
                    break
                if self._body_start < 0:
                    self._body_start = self._decoded_end = pos
                decoded = self._decoded_end
                if decoded != pos:
                    view[decoded:decoded + size] = view[pos:pos + size]
                self._decoded_end = decoded + size
                pos += size
                self._chunk_left -= size
                if self._chunk_left == 0:
                    self._part = _DATA_END
            elif part == _SIZE:
                eol = buf.find(b"\r\n", pos, min(end, pos + limits.max_chunk_line + 2))
                if eol < 0:
                    if end - pos > limits.max_chunk_line:
                        raise HttpError(400, "chunk-size line too long")
                    break
                size = _chunk_size(bytes(view[pos:eol]))
                self._overhead += eol + 4 - pos
                pos = eol + 2
                decoded = self._decoded_end - self._body_start if self._body_start >= 0 else 0
                if self._overhead > decoded // 4 + limits.max_chunk_overhead:
                    raise HttpError(400, "too many chunks")
                if size == 0:
                    self._part = _TRAILERS
                    self._scan = pos
                    continue
                if decoded + size > limits.max_request_bytes:
                    self._server.count(Action.request_too_large)
                    self._refuse_late(413, f"body exceeds the limit of {limits.max_request_bytes} bytes")
                    return True
                if not self._fits(size - (end - pos)):
                    return True
                self._chunk_left = size
                self._part = _DATA
            elif part == _DATA_END:
                if end - pos < 2:
                    break
                if buf[pos] != 13 or buf[pos + 1] != 10:
                    raise HttpError(400, "chunk data not followed by CRLF")
                pos += 2
                self._part = _SIZE
            else:  # trailer fields: checked, then discarded
                eol = buf.find(b"\r\n", max(pos, self._scan - 1), end)
                if eol < 0:
                    self._scan = end
                    if self._trailer_bytes + end - pos > limits.max_header_bytes:
                        raise HttpError(431, "trailer section too large")
                    break
                self._trailer_bytes += eol + 2 - pos
                if self._trailer_bytes > limits.max_header_bytes:
                    raise HttpError(431, "trailer section too large")
                if eol == pos:  # the empty line: the end of the body
                    self._pos = eol + 2
                    self._scan = 0
                    start = self._body_start
                    body = bytes(view[start:self._decoded_end]) if start >= 0 else b""
                    self._body_start = -1
                    self._dispatch(body)
                    return True
                self._trailers += 1
                if self._trailers > limits.max_headers:
                    raise HttpError(431, "too many trailer fields")
                _trailer(bytes(view[pos:eol]))
                pos = eol + 2
        self._pos = pos
        return False

    # -- handing over and answering ------------------------------------------------------------

    def _dispatch(self, body: bytes | memoryview) -> None:
        """Run the handler on the complete request, as a task of its own."""
        request = self._request
        assert request is not None
        request.body = body
        self._state = _HANDLING
        self.deadline = self._body_until = _INF
        # the body's budget is the handler's now, until its task is done
        self._held = self._reserved  # room prepaid and not filled included: the lent buffer has it
        self._reserved = self._prepaid = 0
        task = self._loop.create_task(self._server.handler(request))
        self._server._tasks.add(task)
        task.add_done_callback(self._handled)

    def _handled(self, task: asyncio.Task[Response]) -> None:
        self._server._tasks.discard(task)
        request = self._request
        if self._held or self._ahead:
            self._account.give(self._held + self._ahead)  # type: ignore[union-attr]  # held only from an account
            self._held = self._ahead = 0
        if self._state == _CLOSED and self._account is not None:
            self._account.close()  # the connection went while the handler ran
        if task.cancelled():
            self._return_lent(request)
            self.abort()
            return
        exc = task.exception()
        if exc is not None:
            self._failed(request, exc)
        else:
            self._answer(task.result())
        self._return_lent(request)  # after the answer, which may hold the body
        if self._state != _CLOSED:
            self._process()

    def _return_lent(self, request: Request | None) -> None:
        """The buffer a body was handed over in goes back to the pool: nothing reads it now."""
        lent = self._lent
        if lent is not None:
            self._lent = None
            if request is not None:
                request.body = b""
            self._server.buffers.put(lent)

    def _failed(self, request: Request | None, exc: BaseException | None = None) -> None:
        where = f"{request.method} {request.path}" if request is not None else "a request"
        log.error("the HTTP handler failed on %s", where, exc_info=exc or True)
        self._answer(plain(500, "internal error"))

    def _answer(self, response: Response, *, body_read: bool = True) -> None:
        """Send the answer to the current request; then wait for the next one, or close."""
        transport = self._transport
        if self._state == _CLOSED or transport is None:
            return
        request = self._request
        self._request = None
        close = not body_read or self._shutdown or request is None or not request.keep_alive
        http10 = request is not None and request.version == "HTTP/1.0"
        head = request is not None and request.method == "HEAD"
        try:
            data = serialize(response, close=close, keep_alive_10=http10, head=head)
        except Exception:
            log.exception("the HTTP handler's answer cannot be sent")
            data = serialize(plain(500, "internal error"), close=close, keep_alive_10=http10, head=head)
        if self._tls and not close and len(data) > _TLS_SLICE:
            self._send_slices(memoryview(data))  # the rest, if any, once writing resumes
        else:
            transport.write(data)
        if not body_read or (close and (self._end > self._pos or self._read_paused)):
            self._linger()  # input follows that was not read: closing now could reset the answer
        elif close:
            self._close()
        else:
            self._enter_idle()
            if self.write_paused_at:
                self._leave_grown_buffer()

    def _leave_grown_buffer(self) -> None:
        """The answers back up: a grown buffer a body was copied out of (input followed it) goes
        back, what was read ahead into the connection's own buffer. Kept, it stayed until the
        connection closed, in no account once the handler was done: clients pipelining reviews of
        1 MB and never reading the answers left one per connection (26 MiB at the webhook's cap)."""
        buf = self._buf
        live = self._end - self._pos
        size = self._limits.buffer_size
        if buf is self._own or buf is _EMPTY or buf is _DISCARD or self._body_start >= 0 or live > size:
            return
        own = self._own
        if own is None:
            own = self._own = self._new_own(size, live)
        elif len(own) < live:
            return
        self._move(own, self._pos, live)

    def _send_slices(self, data: memoryview) -> None:
        """Hand ``data`` to the (TLS) transport a slice at a time until it pauses writing; what
        is left waits in ``_unsent`` for resume_writing (see ``_TLS_SLICE``)."""
        transport = self._transport
        assert transport is not None
        size, at = len(data), 0
        while at < size and not self.write_paused_at:
            transport.write(data[at:at + _TLS_SLICE])
            at += _TLS_SLICE
        self._unsent = data[at:] if at < size else None

    def _refuse_late(self, status: int, message: str) -> None:
        """Refuse a request whose head was accepted (413, 417, 503), in the application's format."""
        request = self._request
        assert request is not None
        refuse = self._server.refuse
        response = None
        if refuse is not None:
            try:
                response = refuse(request, status, message)
            except Exception:
                log.exception("the HTTP refusal failed on %s %s", request.method, request.path)
        if response is None:
            response = plain(status, message, {"Retry-After": "1"} if status == 503 else None)
        self._answer(response, body_read=False)

    def _enter_idle(self) -> None:
        self._state = _IDLE
        self.waiting_since = now = self._loop.time()
        self.deadline = now + self._limits.idle_timeout

    def _linger(self) -> None:
        """Answered without reading the whole request: half-close, discard input a while, close."""
        transport = self._transport
        assert transport is not None
        self._state = _LINGER
        self._release()
        # the budget is given back, so the memory goes too: a grown buffer kept for discarding
        # input held it uncharged (over TLS, 20 connections refused at once held 200 MiB), and
        # the connection's own buffer is dropped: discarded input goes where all of it goes
        self._give_back()
        self._drop_own()
        self._buf, self._view = _DISCARD, _DISCARD_VIEW
        self._pos = self._end = self._scan = 0
        self._body_start = -1
        self._line_seen = False
        self.deadline = self._loop.time() + self._limits.linger_timeout
        if self._eof:
            self._close()
            return
        if transport.can_write_eof():
            try:
                transport.write_eof()
            except OSError:  # the client is gone already (its reset came before our FIN)
                self._close()
                return
        if self._read_paused:
            self._read_paused = False
            transport.resume_reading()

    def _close(self) -> None:
        self._state = _CLOSED
        self.deadline = _INF
        self._unsent = None  # over TLS only after the client's EOF: it reads no more
        self._release()
        if self._transport is not None:
            self._transport.close()
