"""Upstream (exporter) TLS: CA bundle, client certificate for mTLS, reloadable.

Use ``context()`` for each new connection (aiohttp: ``ssl=tls.context()`` per
request, its pool keys connections by context so a reload opens new ones;
grpclib: open a new ``Channel`` when ``generation`` changed and close the old one
once its calls finish). ``server_hostname`` is the name to verify and send as SNI
when it differs from the endpoint's host.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Mapping, Sequence

from sidecar.configkit import ConfigError
from sidecar.tls.files import digest, load_ca_into, load_key_pair, load_pair_into
from sidecar.tls.reload import DEFAULT_CHECK_INTERVAL, Loaded, ReloadingTLS, tls_version

#: the ConfigError keys used when the caller gives none
DEFAULT_KEYS = {
    "ca_file": "ca_file",
    "cert_file": "cert_file",
    "key_file": "key_file",
    "min_version": "min_version",
    "server_name": "server_name",
}


class ClientTLS(ReloadingTLS):
    """TLS settings for connections to the upstream; raises ConfigError at construction."""

    role = "client"

    def __init__(
        self,
        *,
        ca_file: str = "",
        cert_file: str = "",
        key_file: str = "",
        server_name: str = "",
        min_version: str = "1.2",
        verify_hostname: bool = True,
        alpn: Sequence[str] = (),
        check_interval: float = DEFAULT_CHECK_INTERVAL,
        keys: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._keys = {**DEFAULT_KEYS, **(keys or {})}
        if bool(cert_file) != bool(key_file):
            missing = "key_file" if cert_file else "cert_file"
            raise ConfigError(
                self._keys[missing],
                "the client certificate and key go together: set both, or neither",
            )
        if server_name and any(c in server_name for c in "/ \t@"):
            raise ConfigError(self._keys["server_name"], f"{server_name!r} is not a host name")
        self._min_version = tls_version(self._keys["min_version"], min_version)
        self._server_name = server_name
        self._verify_hostname = verify_hostname
        self._alpn = tuple(alpn)
        super().__init__(
            {"ca_file": ca_file, "cert_file": cert_file, "key_file": key_file},
            check_interval=check_interval,
            clock=clock,
        )

    @property
    def server_hostname(self) -> str | None:
        """The name to verify instead of the endpoint's host (aiohttp ``server_hostname``,
        grpclib ``Configuration(ssl_target_name_override=...)``), or None."""
        return self._server_name or None

    @property
    def has_client_certificate(self) -> bool:
        return "cert_file" in self._files

    def context(self) -> ssl.SSLContext:
        """The current context; checks the files at most every ``check_interval`` seconds."""
        self.maybe_reload()
        return self._current.context

    def _load(self) -> Loaded:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = self._min_version
        contents: dict[str, bytes] = {}
        leaf = None
        ca_path = self._files.get("ca_file")
        if ca_path:
            contents["ca"] = load_ca_into(ctx, self._keys["ca_file"], ca_path)
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        cert_path = self._files.get("cert_file")
        if cert_path:
            key_path = self._files["key_file"]
            pair = load_key_pair(self._keys["cert_file"], cert_path, self._keys["key_file"], key_path)
            load_pair_into(ctx, pair, self._keys["cert_file"], self._keys["key_file"])
            contents["cert"], contents["key"], leaf = pair.cert_pem, pair.key_pem, pair.leaf
        ctx.check_hostname = self._verify_hostname
        ctx.verify_mode = ssl.CERT_REQUIRED
        if self._alpn:
            ctx.set_alpn_protocols(list(self._alpn))
        return Loaded(ctx, digest(contents), leaf)
