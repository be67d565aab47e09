"""TLS and identity: reloadable client (upstream) and server (receivers) TLS, mTLS with
SPIFFE IDs, a development PKI, and their metrics.

- ``sidecar.tls.client.ClientTLS``: upstream TLS/mTLS, reloaded when its files change.
- ``sidecar.tls.server.ServerTLS``: inbound TLS/mTLS with a SPIFFE allowlist; ``authorize``.
- ``sidecar.tls.server.peer_from_ssl`` / ``spiffe_allowed``: the peer identity for policies.
- ``sidecar.tls.config``: the ``[receivers_tls]`` and ``[exporter_tls]`` sections.
- ``sidecar.tls.metrics.TLSMetrics``: expiry gauge, reload, refusal and handshake counters.
- ``sidecar.tls.certs``: a development PKI (``otlp-sidecar certs``).

Imports stay in the submodules, so ``import sidecar.tls.cli`` is light.
"""
