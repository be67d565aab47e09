"""Which compression an exporter sends: the configured one, a lower one once the upstream refuses it.

An upstream that cannot decode an encoding (aiohttp without zstd answers 400 naming it; an
OTLP/HTTP server may answer 415; a gRPC C-core server ends the call with UNIMPLEMENTED or
INTERNAL naming grpc-encoding) gets the same batch again with the next encoding, zstd -> gzip ->
none, and keeps that encoding. The configured one is tried again every ``probe_interval`` seconds,
so an upstream that learns zstd later gets it again; a refused probe costs one retried request.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable

from sidecar.masked_text import quoted

log = logging.getLogger(__name__)

#: best first; "identity" is no compression
ORDER = ("zstd", "gzip", "identity")
#: seconds after a downgrade before the configured encoding is tried again
PROBE_INTERVAL = 300.0

_NAMES_ENCODING = re.compile(r"encod|compress|zstd|zstandard|gzip|deflate", re.IGNORECASE)

DowngradeListener = Callable[[str, str], None]


def names_encoding(message: str) -> bool:
    """True if an error message is about the request's encoding (e.g. aiohttp's
    "Can not decode content-encoding: zstandard (zstd)")."""
    return bool(_NAMES_ENCODING.search(message))


def parse_accepted(header: str | None) -> frozenset[str] | None:
    """The encodings an ``Accept-Encoding`` / ``grpc-accept-encoding`` value lists (None if absent)."""
    if header is None:
        return None
    names = {part.split(";", 1)[0].strip().lower() for part in header.split(",")}
    return frozenset(name for name in names if name) | {"identity"}


class Negotiator:
    """The encoding to send now, lowered on refusals and raised again by a periodic probe."""

    def __init__(
        self, preferred: str, *, probe_interval: float = PROBE_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.preferred = preferred if preferred in ORDER else "identity"
        self.current = self.preferred
        self.probe_interval = probe_interval
        #: bumped whenever ``current`` changes (a gRPC exporter opens a fresh connection then)
        self.generation = 0
        self._clock = clock
        self._lowered_at: float | None = None
        self._listeners: list[DowngradeListener] = []

    def watch(self, listener: DowngradeListener) -> None:
        """Call ``listener(from, to)`` on each downgrade (the metric)."""
        self._listeners.append(listener)

    def select(self) -> str:
        """The encoding for the next request; the configured one again once a probe is due."""
        if self._lowered_at is not None and self._clock() - self._lowered_at >= self.probe_interval:
            log.info("trying %s compression upstream again (using %s since a refusal)", self.preferred, self.current)
            self._lowered_at = None
            self._set(self.preferred)
        return self.current

    def refused(self, encoding: str, reason: str, accepted: Iterable[str] | None = None) -> str | None:
        """The upstream refused ``encoding``: the next encoding to retry the same request with,
        or None if there is none lower (``encoding`` was already none)."""
        allowed = None if accepted is None else set(accepted) | {"identity"}
        lower = [e for e in ORDER[ORDER.index(encoding) + 1:] if allowed is None or e in allowed] \
            if encoding in ORDER else ["identity"]
        if not lower:
            return None
        fallback = lower[0]
        if ORDER.index(self.current) <= ORDER.index(encoding):
            # not already lowered by a concurrent request: lower it now, and say so once
            log.warning(
                "upstream does not accept %s compression (%s); sending %s from now on, trying %s again in %g s",
                encoding, quoted(reason, 200), fallback, self.preferred, self.probe_interval,
            )
            self._set(fallback)
            for listener in self._listeners:
                listener(encoding, fallback)
        self._lowered_at = self._clock()
        return self.current if ORDER.index(self.current) > ORDER.index(encoding) else fallback

    def _set(self, encoding: str) -> None:
        if encoding != self.current:
            self.current = encoding
            self.generation += 1
