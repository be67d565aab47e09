"""The sidecar's own log: text or JSON lines on stderr."""

from __future__ import annotations

import json
import logging
import sys
import time

#: asyncio's per-write warnings a client can set off at its own rate (a TLS client that drops the
#: connection while answers to its pipelined requests are being written: 19,000 lines in 3 s)
CLIENT_PACED_WARNINGS = ("SSL connection is closed", "socket.send() raised exception.")


class RateLimited(logging.Filter):
    """Let one record of each of ``messages`` through every ``every`` seconds, with the count of
    those left out since (others pass untouched)."""

    def __init__(self, messages: tuple[str, ...] = CLIENT_PACED_WARNINGS, every: float = 30.0) -> None:
        super().__init__()
        self.messages = messages
        self.every = every
        self._last: dict[str, float] = {}
        self._dropped: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg if isinstance(record.msg, str) else ""
        if message not in self.messages:
            return True
        now = time.monotonic()
        if now - self._last.get(message, -self.every) < self.every:
            self._dropped[message] = self._dropped.get(message, 0) + 1
            return False
        self._last[message] = now
        dropped = self._dropped.pop(message, 0)
        if dropped:
            record.msg = f"{message} ({dropped} more like it in the last {self.every:g} s)"
        return True


def limit_client_paced_warnings(every: float = 30.0) -> None:
    """Rate-limit asyncio's per-write warnings on the ``asyncio`` logger (once per process)."""
    logger = logging.getLogger("asyncio")
    if not any(isinstance(existing, RateLimited) for existing in logger.filters):
        logger.addFilter(RateLimited(every=every))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"))


def configure(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # grpclib logs each cancelled or refused stream at INFO: keep the sidecar's log about the sidecar
    logging.getLogger("grpclib").setLevel(max(logging.WARNING, root.level))
    # hpack and h2 log every header block they decode at DEBUG: request headers (authorization,
    # API keys) must not reach the log, whatever the level
    for name in ("hpack", "h2"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    limit_client_paced_warnings()
