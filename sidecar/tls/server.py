"""Inbound TLS and mTLS for the receivers, reloadable, with a SPIFFE ID allowlist.

``context()`` is a *stable* context to give the listener once (aiohttp
``TCPSite(ssl_context=...)``, grpclib ``Server.start(ssl=...)``): its SNI callback,
run at every handshake, checks the files (at most every ``check_interval``) and
hands the handshake the current generation, so a rotated certificate serves new
connections without restarting the listener and without touching open ones.

Client certificates are requested when ``client_ca_file`` is set and verified in
the handshake (a certificate from another CA, or an expired one, fails it). Whether
one is *required*, and whether its SPIFFE ID is allowed, is decided after the
handshake by :meth:`ServerTLS.authorize` (per connection or request), so the client
gets a clear error and the refusal is counted.
"""

from __future__ import annotations

import ssl
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sidecar.configkit import ConfigError
from sidecar.identity import Peer
from sidecar.tls.files import digest, load_ca_into, load_key_pair, load_pair_into
from sidecar.tls.reload import DEFAULT_CHECK_INTERVAL, Loaded, ReloadingTLS, log, tls_version
from sidecar.wire.listener import format_address as format_address  # kept here for its importers

DEFAULT_KEYS = {
    "cert_file": "cert_file",
    "key_file": "key_file",
    "client_ca_file": "client_ca_file",
    "require_client_cert": "require_client_cert",
    "spiffe_allow": "spiffe_allow",
    "min_version": "min_version",
}

#: called with the reason of each refused peer
RefusalListener = Callable[[str], None]


class PeerRefused(Exception):
    """A TLS peer that passed the handshake but may not send (no certificate, SPIFFE ID)."""

    #: reason -> (HTTP status, gRPC status name)
    STATUSES: dict[str, tuple[int, str]] = {
        "no_client_certificate": (401, "UNAUTHENTICATED"),
        "spiffe_id_not_allowed": (403, "PERMISSION_DENIED"),
        "not_tls": (403, "PERMISSION_DENIED"),
    }

    def __init__(self, reason: str, message: str, peer: Peer) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.peer = peer

    @property
    def http_status(self) -> int:
        return self.STATUSES.get(self.reason, (403, ""))[0]

    @property
    def grpc_status(self) -> str:
        """The name of the ``grpclib.const.Status`` member to answer with."""
        return self.STATUSES.get(self.reason, (0, "PERMISSION_DENIED"))[1]


def spiffe_id_from_cert(cert: Mapping[str, Any] | None) -> str:
    """The SPIFFE ID of a verified certificate (``getpeercert()`` dict): its one
    ``spiffe://`` URI SAN; "" when there is none, or more than one (not a valid SVID)."""
    if not cert:
        return ""
    ids = [v for k, v in cert.get("subjectAltName", ()) if k == "URI" and v.startswith("spiffe://")]
    return ids[0] if len(ids) == 1 else ""


def peer_from_cert(cert: Mapping[str, Any] | None, address: str, *, tls: bool = True) -> Peer:
    """A :class:`Peer` from a verified certificate as ``getpeercert()`` returns it."""
    return Peer(address=address, tls=tls, spiffe_id=spiffe_id_from_cert(cert) if tls else "")


def peer_from_ssl(ssl_object: ssl.SSLObject | ssl.SSLSocket | None, address: str) -> Peer:
    """``Peer(address, tls, spiffe_id)`` of a connection; ``None`` means plaintext."""
    if ssl_object is None:
        return Peer(address=address, tls=False)
    return peer_from_cert(ssl_object.getpeercert(), address)


def peer_from_transport(transport: Any) -> Peer:
    """The peer of an asyncio transport (aiohttp ``request.transport``)."""
    if transport is None:
        return Peer()
    address = format_address(transport.get_extra_info("peername"))
    return peer_from_ssl(transport.get_extra_info("ssl_object"), address)


def spiffe_allowed(peer: Peer, allow: Sequence[str]) -> bool:
    """Whether the peer's SPIFFE ID is allowed: an entry is an exact ID, or a prefix
    ending in ``/*`` (``spiffe://td/ns/prod/*`` allows everything under ``ns/prod/``).
    An empty allowlist allows everyone; a peer without SPIFFE ID matches no entry."""
    if not allow:
        return True
    spiffe_id = peer.spiffe_id
    if not spiffe_id:
        return False
    for entry in allow:
        if entry.endswith("/*"):
            if spiffe_id.startswith(entry[:-1]) and len(spiffe_id) > len(entry) - 1:
                return True
        elif spiffe_id == entry:
            return True
    return False


def check_spiffe_allow(key: str, allow: Sequence[str]) -> None:
    """Refuse allowlist entries that cannot match: not ``spiffe://``, or a ``*`` in the middle."""
    for entry in allow:
        if not entry.startswith("spiffe://") or len(entry) <= len("spiffe://"):
            raise ConfigError(key, f"{entry!r} is not a SPIFFE ID (spiffe://trust-domain/path)")
        if "*" in entry[:-1] or (entry.endswith("*") and not entry.endswith("/*")):
            raise ConfigError(key, f"{entry!r}: a wildcard is allowed only as a trailing '/*'")


class ServerTLS(ReloadingTLS):
    """TLS (and mTLS) settings of one listener; raises ConfigError at construction."""

    role = "server"

    def __init__(
        self,
        *,
        cert_file: str,
        key_file: str,
        client_ca_file: str = "",
        require_client_cert: bool = False,
        spiffe_allow: Sequence[str] = (),
        min_version: str = "1.2",
        alpn: Sequence[str] = (),
        check_interval: float = DEFAULT_CHECK_INTERVAL,
        keys: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._keys = {**DEFAULT_KEYS, **(keys or {})}
        if not cert_file:
            raise ConfigError(self._keys["cert_file"], "a TLS listener needs a certificate file")
        if not key_file:
            raise ConfigError(self._keys["key_file"], "a TLS listener needs a private key file")
        if (require_client_cert or spiffe_allow) and not client_ca_file:
            what = "require_client_cert" if require_client_cert else "spiffe_allow"
            raise ConfigError(self._keys[what], "needs client_ca_file, the CA that signs the client certificates")
        check_spiffe_allow(self._keys["spiffe_allow"], spiffe_allow)
        self._min_version = tls_version(self._keys["min_version"], min_version)
        # an allowlist implies a certificate: a peer without one has no SPIFFE ID
        self.require_client_cert = bool(require_client_cert or spiffe_allow)
        self.spiffe_allow = tuple(spiffe_allow)
        self._alpn = tuple(alpn)
        self._refusal_listeners: list[RefusalListener] = []
        self._handshake_listeners: list[RefusalListener] = []
        self._verdicts: weakref.WeakKeyDictionary[Any, Peer | PeerRefused] = weakref.WeakKeyDictionary()
        super().__init__(
            {"cert_file": cert_file, "key_file": key_file, "client_ca_file": client_ca_file},
            check_interval=check_interval,
            clock=clock,
        )
        self._front = self._current.context
        self._front.sni_callback = self._on_client_hello

    def context(self) -> ssl.SSLContext:
        """The listener's context: give it once; rotation happens inside it."""
        return self._front

    def current_context(self) -> ssl.SSLContext:
        """The context of the current generation (what new handshakes use)."""
        self.maybe_reload()
        return self._current.context

    def add_refusal_listener(self, listener: RefusalListener) -> None:
        """``listener(reason)`` for each request refused by :meth:`authorize`."""
        self._refusal_listeners.append(listener)

    def add_handshake_listener(self, listener: RefusalListener) -> None:
        """``listener(reason)`` for each failed handshake the acceptor saw."""
        self._handshake_listeners.append(listener)

    def handshake_failed(self, reason: str) -> None:
        """Report a failed inbound handshake (called by ``sidecar.tls.acceptor``)."""
        self._call(self._handshake_listeners, reason)

    def authorize(self, ssl_object: ssl.SSLObject | ssl.SSLSocket | None, address: str) -> Peer:
        """The peer of a connection, or :class:`PeerRefused` (counted) when it may not send.

        Call it for each request (or connection); the verdict is cached per connection."""
        if ssl_object is None:
            refused = PeerRefused("not_tls", "this listener accepts TLS connections only", Peer(address))
            self._count(refused.reason)
            raise refused
        cached = self._verdicts.get(ssl_object)
        if cached is None:
            cached = self._judge(ssl_object.getpeercert(), address)
            self._verdicts[ssl_object] = cached
        if isinstance(cached, PeerRefused):
            self._count(cached.reason)
            raise cached
        return cached

    def authorize_transport(self, transport: Any) -> Peer:
        """:meth:`authorize` for the asyncio transport of a connection (both receivers use it)."""
        address = format_address(transport.get_extra_info("peername")) if transport else ""
        ssl_object = transport.get_extra_info("ssl_object") if transport else None
        return self.authorize(ssl_object, address)

    def authorize_cert(self, cert: Mapping[str, Any] | None, address: str) -> Peer:
        """:meth:`authorize` from a TLS connection's verified certificate as ``getpeercert()``
        gives it (grpclib: ``stream.peer.cert()``); None means the client sent none."""
        verdict = self._judge(cert, address)
        if isinstance(verdict, PeerRefused):
            self._count(verdict.reason)
            raise verdict
        return verdict

    def _judge(self, cert: Mapping[str, Any] | None, address: str) -> Peer | PeerRefused:
        peer = peer_from_cert(cert, address)
        if self.require_client_cert and not cert:
            return PeerRefused(
                "no_client_certificate",
                "a client certificate is required on this listener (mTLS); none was presented",
                peer,
            )
        if not spiffe_allowed(peer, self.spiffe_allow):
            shown = peer.spiffe_id or "(no SPIFFE ID in the certificate)"
            return PeerRefused("spiffe_id_not_allowed", f"SPIFFE ID {shown} is not allowed", peer)
        return peer

    def _count(self, reason: str) -> None:
        self._call(self._refusal_listeners, reason)

    @staticmethod
    def _call(listeners: list[RefusalListener], reason: str) -> None:
        for listener in listeners:
            try:
                listener(reason)
            except Exception:
                log.exception("TLS refusal listener failed")

    def _on_client_hello(self, ssl_object: Any, server_name: str | None, ctx: ssl.SSLContext) -> None:
        """SNI callback, run in every handshake: hand it the current generation."""
        try:
            current = self.current_context()
            if current is not ctx:
                ssl_object.context = current
        except Exception:  # never abort a handshake over a reload problem
            log.exception("server TLS: could not switch to the current certificate")

    def _load(self) -> Loaded:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = self._min_version
        pair = load_key_pair(
            self._keys["cert_file"],
            self._files["cert_file"],
            self._keys["key_file"],
            self._files["key_file"],
        )
        load_pair_into(ctx, pair, self._keys["cert_file"], self._keys["key_file"])
        contents = {"cert": pair.cert_pem, "key": pair.key_pem}
        ca_path = self._files.get("client_ca_file")
        if ca_path:
            contents["ca"] = load_ca_into(ctx, self._keys["client_ca_file"], ca_path)
            # requested and verified in the handshake; required (or not) by authorize()
            ctx.verify_mode = ssl.CERT_OPTIONAL
        if self._alpn:
            ctx.set_alpn_protocols(list(self._alpn))
        return Loaded(ctx, digest(contents), pair.leaf)
