"""Get a bundle from its source: an HTTP(S) bundle server (ETag / ``If-None-Match``), a
``.tar.gz`` file or a directory. Each fetch says "unchanged" as cheaply as it can: a 304 from
the server, or the same file status, so an idle fleet costs its bundle server nothing but
small requests.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from sidecar.policy.bundles.archive import BundleError, BundleLimits, read_archive, read_path

_CHUNK = 64 * 1024


def shown_url(url: str) -> str:
    """A bundle URL safe to log and show: credentials and the query (presigned URLs) left out."""
    if "://" not in url:
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


@dataclass
class Fetched:
    """The outcome of one fetch: how to read the bundle's files (None when unchanged: nothing to
    read), the ETag or file fingerprint, and the bytes transferred. Reading the files is where a
    malformed bundle is found; the caller does it (off the loop) after noting the new tag, so a
    bad bundle is refused once, not downloaded again on every poll."""

    read: Callable[[], dict[str, bytes]] | None
    tag: str
    transferred: int = 0


class HttpFetcher:
    """GETs with ``If-None-Match``; the body read in bounded chunks (never decompressed by aiohttp).

    ``ca_file`` is read again when it changes (a rotated Secret: the kubelet swaps the file), so
    a bundle server whose certificate moved to a new CA is trusted without a restart.
    """

    def __init__(self, url: str, limits: BundleLimits, timeout: float, ca_file: str = "",
                 token_file: str = "") -> None:
        self.url = url
        self.limits = limits
        self.timeout = timeout
        self.ca_file = ca_file
        self.token_file = token_file
        self._session: aiohttp.ClientSession | None = None
        #: the status of ca_file when the session's TLS context was made from it
        self._ca_stamp: tuple[int, int, int] | None = None

    def _ca_status(self) -> tuple[int, int, int] | None:
        if not self.ca_file or not self.url.startswith("https://"):
            return None
        try:
            st = os.stat(self.ca_file)
        except OSError as exc:
            raise BundleError(f"cannot read policy.bundle_ca_file {self.ca_file}: {exc.strerror}") from None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def _ssl(self) -> Any:
        if not self.url.startswith("https://"):
            return None
        try:
            return ssl.create_default_context(cafile=self.ca_file or None)
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise BundleError(f"cannot use policy.bundle_ca_file {self.ca_file}: {reason}") from None

    async def fetch(self, etag: str) -> Fetched:
        stamp = self._ca_status()
        if self._session is not None and stamp != self._ca_stamp:
            await self.close()  # the CA changed: a new TLS context, new connections
        if self._session is None:
            context = self._ssl()
            self._ca_stamp = stamp
            self._session = aiohttp.ClientSession(
                auto_decompress=False, connector=aiohttp.TCPConnector(limit=2, ssl=context),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            )
        headers = {"Accept-Encoding": "identity", "Accept": "application/gzip, application/octet-stream"}
        if etag:
            headers["If-None-Match"] = etag
        if self.token_file:
            try:
                token = Path(self.token_file).read_text().strip()
            except OSError as exc:
                raise BundleError(f"cannot read policy.bundle_token_file: {exc.strerror}") from None
            headers["Authorization"] = f"Bearer {token}"
        where = shown_url(self.url)
        try:
            # with a token, a redirect is not followed: the token would go to whatever server it names
            async with self._session.get(self.url, headers=headers, allow_redirects=not self.token_file) as response:
                if response.status == 304:
                    return Fetched(None, etag)
                if 300 <= response.status < 400 and self.token_file:
                    raise BundleError(
                        f"the bundle server {where} redirected (HTTP {response.status}); with "
                        "policy.bundle_token_file set redirects are not followed: use the final URL"
                    )
                if response.status != 200:
                    raise BundleError(f"the bundle server {where} answered HTTP {response.status}")
                if response.headers.get("Content-Encoding", "identity").lower() not in ("identity", ""):
                    raise BundleError(f"the bundle server {where} sent a Content-Encoding; serve the .tar.gz as is")
                declared = response.content_length
                if declared is not None and declared > self.limits.max_download:
                    raise BundleError(
                        f"the bundle at {where} is {declared} bytes, over policy.bundle_max_download_size "
                        f"({self.limits.max_download})"
                    )
                body = bytearray()
                async for chunk in response.content.iter_chunked(_CHUNK):
                    body += chunk
                    if len(body) > self.limits.max_download:
                        raise BundleError(
                            f"the bundle at {where} is over policy.bundle_max_download_size "
                            f"({self.limits.max_download} bytes)"
                        )
                tag = response.headers.get("ETag", "")
        except (TimeoutError, aiohttp.ClientError, ssl.SSLError, OSError) as exc:
            detail = (str(exc) or type(exc).__name__).replace(self.url, where)  # no presigned query
            raise BundleError(f"cannot download the bundle from {where}: {detail}") from None
        raw, limits = bytes(body), self.limits
        return Fetched(lambda: read_archive(raw, limits), tag, len(body))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class PathFetcher:
    """A ``.tar.gz`` file or a bundle directory; the stat of its files tells a change."""

    def __init__(self, path: str, limits: BundleLimits) -> None:
        self.path = path
        self.limits = limits

    def _fingerprint(self) -> str:
        entries: list[str] = []
        base = Path(self.path)
        try:
            if base.is_dir():
                entries.append(os.path.realpath(base / "..data") if (base / "..data").exists() else "")
                for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
                    dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                    for name in sorted(filenames):
                        st = (Path(dirpath) / name).stat()
                        entries.append(f"{dirpath}/{name}:{st.st_ino}:{st.st_mtime_ns}:{st.st_size}")
            else:
                st = base.stat()
                entries.append(f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}")
        except OSError as exc:
            raise BundleError(f"cannot read bundle {self.path}: {exc.strerror}") from None
        return str(hash(tuple(entries)))

    async def fetch(self, etag: str) -> Fetched:
        tag = await asyncio.to_thread(self._fingerprint)
        if tag == etag:
            return Fetched(None, etag)
        path, limits = self.path, self.limits
        return Fetched(lambda: read_path(path, limits), tag, 0)

    async def close(self) -> None:
        return None
