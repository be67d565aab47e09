"""The reload loop shared by the client and server TLS settings.

The files are checked with ``stat`` at most every ``check_interval`` seconds, from
the caller of ``context()`` (no thread, no task). When a file changed (rewritten,
replaced, or a Kubernetes secret update that swaps the ``..data`` symlink), the
whole set is read and checked again; a complete, valid set becomes the new
context and bumps ``generation``; a broken set keeps the old context, is logged
once (file and problem, never contents) and counted.
"""

from __future__ import annotations

import datetime as dt
import logging
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sidecar.configkit import ConfigError
from sidecar.tls.files import Stamp, describe, stamp

if TYPE_CHECKING:
    from cryptography import x509

log = logging.getLogger("sidecar.tls")

#: TLS versions a setting may name
MIN_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
#: default seconds between two stat checks of the files
DEFAULT_CHECK_INTERVAL = 5.0
#: a certificate closer than this to its end is logged as a warning
EXPIRY_WARNING_SECONDS = 7 * 24 * 3600.0
#: the expiry warning is repeated at most this often
EXPIRY_WARNING_REPEAT = 3600.0

#: called after each reload attempt with (role, "ok" | "failed"): the label values of every reload metric
ReloadListener = Callable[[str, str], None]


def tls_version(key: str, value: str) -> ssl.TLSVersion:
    """``"1.2"`` or ``"1.3"`` as an ``ssl.TLSVersion``; ConfigError on ``key`` otherwise."""
    try:
        return MIN_VERSIONS[str(value).strip()]
    except KeyError:
        raise ConfigError(key, f"{value!r} is not a TLS version; choose '1.2' or '1.3'") from None


@dataclass(frozen=True)
class Loaded:
    """One generation: the context, a digest of the files' contents, the leaf certificate."""

    context: ssl.SSLContext
    digest: str
    leaf: x509.Certificate | None


class ReloadingTLS:
    """Base of :class:`ClientTLS` and :class:`ServerTLS`: files, checks, generations."""

    role = "tls"

    def __init__(
        self,
        files: Mapping[str, str],
        *,
        check_interval: float = DEFAULT_CHECK_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._files = {name: path for name, path in files.items() if path}
        self._check_interval = check_interval
        self._clock = clock
        self._listeners: list[ReloadListener] = []
        self._generation = 0
        self._failed_stamps: dict[str, Stamp] | None = None
        self._last_error = ""
        self._last_expiry_warning: tuple[int, float] | None = None
        self._stamps = self._stamp_all()
        self._current = self._load()  # raises ConfigError: the start stops
        self._next_check = clock() + check_interval
        self._warn_if_expiring()

    # -- to implement -------------------------------------------------------------------
    def _load(self) -> Loaded:
        """Read, check and build a context from the files; raise ConfigError naming the file."""
        raise NotImplementedError

    # -- public ---------------------------------------------------------------------------
    @property
    def generation(self) -> int:
        """Bumps on each reload that changed the files' contents."""
        return self._generation

    @property
    def last_error(self) -> str:
        """The problem of the last failed reload ("" after a success)."""
        return self._last_error

    @property
    def files(self) -> dict[str, str]:
        return dict(self._files)

    @property
    def certificate(self) -> x509.Certificate | None:
        """The leaf certificate in use (the client's or the server's own), if any."""
        return self._current.leaf

    def add_reload_listener(self, listener: ReloadListener) -> None:
        self._listeners.append(listener)

    def seconds_until_expiry(self) -> float | None:
        """Seconds until the certificate in use ends (negative once past), or None without one."""
        leaf = self._current.leaf
        if leaf is None:
            return None
        return (leaf.not_valid_after_utc - dt.datetime.now(dt.UTC)).total_seconds()

    def maybe_reload(self) -> None:
        """Check the files if ``check_interval`` has passed since the last check."""
        now = self._clock()
        if now < self._next_check:
            return
        self._next_check = now + self._check_interval
        self._check_files()
        self._warn_if_expiring()

    def reload_now(self) -> bool:
        """Check the files now; True when a new generation was loaded."""
        before = self._generation
        self._next_check = self._clock() + self._check_interval
        self._check_files()
        self._warn_if_expiring()
        return self._generation != before

    # -- internals ------------------------------------------------------------------------
    def _stamp_all(self) -> dict[str, Stamp]:
        return {name: stamp(path) for name, path in self._files.items()}

    def _check_files(self) -> None:
        stamps = self._stamp_all()
        if stamps == self._stamps or stamps == self._failed_stamps:
            return
        try:
            loaded = self._load()
        except (ConfigError, ssl.SSLError, ValueError, OSError) as exc:
            # ConfigError names the file; anything else is reported by its type and reason
            problem = str(exc) if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}"
            self._failed_stamps = stamps
            self._last_error = problem
            log.warning("%s TLS reload failed, keeping the previous certificates: %s", self.role, problem)
            self._notify("failed")
            return
        self._stamps, self._failed_stamps, self._last_error = stamps, None, ""
        if loaded.digest == self._current.digest:
            return  # touched or re-linked, same contents
        self._current = loaded
        self._generation += 1
        what = describe(loaded.leaf) if loaded.leaf is not None else "CA bundle"
        log.info("%s TLS reloaded (generation %d): %s", self.role, self._generation, what)
        self._notify("ok")

    def _notify(self, result: str) -> None:
        for listener in self._listeners:
            try:
                listener(self.role, result)
            except Exception:  # a metrics hook must not break TLS
                log.exception("TLS reload listener failed")

    def _warn_if_expiring(self) -> None:
        leaf = self._current.leaf
        left = self.seconds_until_expiry()
        if leaf is None or left is None or left >= EXPIRY_WARNING_SECONDS:
            return
        now = self._clock()
        last = self._last_expiry_warning
        if last is not None and last[0] == leaf.serial_number and now - last[1] < EXPIRY_WARNING_REPEAT:
            return
        self._last_expiry_warning = (leaf.serial_number, now)
        log.warning(
            "%s TLS certificate %s expires in %.1f hours; rotate it",
            self.role,
            describe(leaf),
            left / 3600.0,
        )
