"""When descriptors run out, accepting backs off with one log line, not one per connection.

asyncio's accept loop, on EMFILE / ENFILE / ENOBUFS / ENOMEM, reports the error to the loop's
exception handler (a traceback logged at ERROR) and pauses that listener for a second. With many
pending connections that is a traceback per listener per pass. This handler takes those reports:
the first in a quiet period is logged as ONE warning line (with how many followed in the last
period), each is counted as ``accept_backoff`` for its listener, and nothing else is logged.
Every other report goes to the handler that was there before.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from sidecar.overload.reasons import Action

log = logging.getLogger("sidecar.overload")

_ACCEPT_MESSAGE = "socket.accept() out of system resource"
#: seconds between two warning lines
QUIET = 30.0


class AcceptBackoffLog:
    """The loop exception handler that folds accept failures into one line per ``quiet`` seconds."""

    def __init__(self, count: Callable[[str, Action], None] | None = None, quiet: float = QUIET) -> None:
        self._count = count
        self.quiet = quiet
        #: listening address -> listener name (``register``)
        self.listeners: dict[tuple[str, int], str] = {}
        self.reports = 0
        self._since_line = 0
        self._last_line = -float("inf")
        self._previous: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object] | None = None

    def register(self, name: str, address: tuple[str, int]) -> None:
        self.listeners[(address[0], address[1])] = name

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        self._previous = loop.get_exception_handler()
        loop.set_exception_handler(self)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != _ACCEPT_MESSAGE:
            if self._previous is not None:
                self._previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        self.reports += 1
        self._since_line += 1
        listener = self._listener(context.get("socket"))
        if self._count is not None:
            self._count(listener, Action.accept_backoff)
        now = time.monotonic()
        if now - self._last_line >= self.quiet:
            exc = context.get("exception")
            log.warning(
                "out of file descriptors: the %s listener pauses accepting (retried every second; "
                "%d such pauses since the last line, counted in otlp_sidecar_overload_actions_total"
                "{action=\"accept_backoff\"}): %s", listener, self._since_line, exc,
            )
            self._last_line = now
            self._since_line = 0

    def _listener(self, sock: object) -> str:
        """The listener of a listening socket (asyncio hands a TransportSocket or a socket)."""
        getsockname = getattr(sock, "getsockname", None)
        if getsockname is not None:
            try:
                address = getsockname()
                return self.listeners.get((address[0], address[1]), "otlp_http")
            except (OSError, IndexError, TypeError):
                pass
        return "otlp_http"
