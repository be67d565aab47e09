"""The sidecar's one config object, composed of its components' sections.

Each component owns its section (its dataclass, ``configkit.setting`` declarations,
factory defaults and validation): ``[receivers]`` in :mod:`sidecar.receivers.config`,
``[exporter]`` and ``[auth]`` in :mod:`sidecar.export.config`, ``[receivers_tls]`` and
``[exporter_tls]`` in :mod:`sidecar.tls.config`, ``[policy]`` in :mod:`sidecar.policy.config`,
``[limits]`` in :mod:`sidecar.overload.config`, ``[admin]`` in :mod:`sidecar.admin.config`.
This module declares the process's own sections (``[pod]``, ``[log]``) and does what spans components: reading the
file (``--config``) and the environment, the standard ``OTEL_EXPORTER_OTLP_*`` variables,
and the checks across sections (listeners need TLS off loopback, no upstream that is
one of our own listeners, one memory ceiling). Components never import this module.

Precedence, lowest first: built-in defaults, the TOML file (``--config``), the
standard ``OTEL_EXPORTER_OTLP_*`` variables (for the upstream only), and the
``SIDECAR_<SECTION>_<KEY>`` variables (plus the short contract names such as
``SIDECAR_GRPC_ENDPOINT``). Every wrong value raises :class:`ConfigError`
naming the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sidecar.admin.config import AdminConfig
from sidecar.configkit import (
    ConfigError,
    env_names,
    load_section,
    parse_endpoint,
    parse_key_values,
    read_toml,
    render_markdown,
    setting,
)
from sidecar.export.config import AuthConfig, ExporterConfig, upstream_port
from sidecar.identity import PodConfig
from sidecar.overload.config import LimitsConfig
from sidecar.policy.config import PolicyConfig
from sidecar.receivers.config import ReceiversConfig
from sidecar.signals import Signal
from sidecar.tls.config import InboundTLSConfig, UpstreamTLSConfig, check_listen_address

#: the section types are exported too: ``Config``'s fields are typed with them
__all__ = ["AdminConfig", "Config", "ConfigError", "ExporterConfig", "ReceiversConfig", "load"]


@dataclass(frozen=True)
class LogConfig:
    """The sidecar's own log."""

    level: str = setting("info", "Log level.", choices=["debug", "info", "warning", "error"])
    format: str = setting("text", "Log line format.", choices=["text", "json"])


#: (section name, class, description), in the order of the docs
SECTIONS: tuple[tuple[str, type[Any], str], ...] = (
    ("receivers", ReceiversConfig, ReceiversConfig.__doc__ or ""),
    ("receivers_tls", InboundTLSConfig, InboundTLSConfig.__doc__ or ""),
    ("exporter", ExporterConfig, ExporterConfig.__doc__ or ""),
    ("exporter_tls", UpstreamTLSConfig, UpstreamTLSConfig.__doc__ or ""),
    ("auth", AuthConfig, AuthConfig.__doc__ or ""),
    ("policy", PolicyConfig, PolicyConfig.__doc__ or ""),
    ("admin", AdminConfig, AdminConfig.__doc__ or ""),
    ("limits", LimitsConfig, LimitsConfig.__doc__ or ""),
    ("pod", PodConfig, PodConfig.__doc__ or ""),
    ("log", LogConfig, LogConfig.__doc__ or ""),
)


@dataclass(frozen=True)
class Config:
    receivers: ReceiversConfig = field(default_factory=ReceiversConfig)
    receivers_tls: InboundTLSConfig = field(default_factory=InboundTLSConfig)
    exporter: ExporterConfig = field(default_factory=ExporterConfig)
    exporter_tls: UpstreamTLSConfig = field(default_factory=UpstreamTLSConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    pod: PodConfig = field(default_factory=PodConfig)
    log: LogConfig = field(default_factory=LogConfig)
    source: str = ""
    #: exporter settings of a signal that has its own OTEL_EXPORTER_OTLP_<SIGNAL>_* variables
    signal_exporters: dict[Signal, ExporterConfig] = field(default_factory=dict)
    #: what the loader decided for the user that they should know (logged as warnings at start)
    notices: tuple[str, ...] = ()

    def exporter_for(self, signal: Signal) -> ExporterConfig:
        return self.signal_exporters.get(signal, self.exporter)


# OTEL_EXPORTER_OTLP_* -> exporter key; per-signal variants handled below
_OTEL_GENERAL = {
    "ENDPOINT": "endpoint",
    "PROTOCOL": "protocol",
    "HEADERS": "headers",
    "COMPRESSION": "compression",
    "TIMEOUT": "timeout",
    "CERTIFICATE": "certificate",
    "CLIENT_KEY": "client_key",
    "CLIENT_CERTIFICATE": "client_certificate",
    "INSECURE": "insecure",
}


def _otel_overrides(
    env: Mapping[str, str], signal: Signal | None = None, names: dict[str, str] | None = None,
) -> dict[str, str]:
    """Translate the standard OTEL_EXPORTER_OTLP_* variables into exporter env overrides.

    With ``signal``: only that signal's own variables (``OTEL_EXPORTER_OTLP_TRACES_HEADERS``...).
    ``names`` gets each SIDECAR_* variable made, mapped to the OTEL_* one it came from.
    """
    out: dict[str, str] = {}
    made = names if names is not None else {}
    infix = f"{signal.value.upper()}_" if signal is not None else ""
    for suffix, key in _OTEL_GENERAL.items():
        name = f"OTEL_EXPORTER_OTLP_{infix}{suffix}"
        if signal is not None and suffix == "ENDPOINT":
            continue  # per-signal endpoints are their own keys (traces_endpoint...)
        if name in env:
            value = env[name]
            if suffix == "TIMEOUT":
                value = _otel_timeout(name, value)
            elif suffix == "PROTOCOL" and value.strip() == "http/json":
                raise ConfigError(
                    f"exporter.protocol (from {name})",
                    "'http/json' is not supported upstream; choose 'grpc' or 'http/protobuf'",
                )
            out[f"SIDECAR_EXPORTER_{key.upper()}"] = value
            made[f"SIDECAR_EXPORTER_{key.upper()}"] = name
    if signal is None:
        for each in Signal:
            name = f"OTEL_EXPORTER_OTLP_{each.value.upper()}_ENDPOINT"
            if name in env:
                out[f"SIDECAR_EXPORTER_{each.value.upper()}_ENDPOINT"] = env[name]
                made[f"SIDECAR_EXPORTER_{each.value.upper()}_ENDPOINT"] = name
    return out


def _named_as_set(exc: ConfigError, names: Mapping[str, str], env: Mapping[str, str]) -> ConfigError:
    """The error naming the OTEL_* variable the user set, not the SIDECAR_* one made from it."""
    for made, otel in names.items():
        if made not in env and f"(from {made})" in exc.key:
            return ConfigError(exc.key.replace(f"(from {made})", f"(from {otel})"), exc.message)
    return exc


def _otel_timeout(name: str, value: str) -> str:
    try:
        millis = float(value)
    except ValueError:
        raise ConfigError(f"exporter.timeout (from {name})", "must be milliseconds as a number") from None
    return f"{millis / 1000.0}"


def load(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Load the config from an optional TOML file and the environment."""
    env = dict(os.environ if env is None else env)
    source = str(path) if path else ""
    keys = {name: [f.name for f in dataclasses.fields(cls)] for name, cls, _ in SECTIONS}
    data = read_toml(path, list(keys), keys)
    # OTEL_* sit below SIDECAR_EXPORTER_*: apply them only where SIDECAR_* is silent
    names: dict[str, str] = {}
    merged_env = {**_otel_overrides(env, names=names), **env}
    try:
        sections = {name: load_section(cls, name, data.get(name), merged_env) for name, cls, _ in SECTIONS}
    except ConfigError as exc:
        raise _named_as_set(exc, names, env) from None
    notices: list[str] = _unknown_variables(env)
    sections["exporter"] = sections["exporter"].with_schemes(notices)
    for key, endpoint in sections["receivers"].listeners():
        check_listen_address(key, endpoint, sections["receivers_tls"])
    signal_exporters = {}
    for signal in Signal:
        own_names: dict[str, str] = {}
        own = _otel_overrides(env, signal, own_names)
        if own:
            # the most specific wins: a signal's own OTEL variables over the general ones
            try:
                specific = load_section(ExporterConfig, "exporter", data.get("exporter"), {**merged_env, **own})
            except ConfigError as exc:
                raise _named_as_set(exc, {**names, **own_names}, env) from None
            signal_exporters[signal] = specific.with_schemes(notices)
    config = Config(
        **sections, source=source, signal_exporters=signal_exporters, notices=tuple(dict.fromkeys(notices)),
    )
    check_no_loop(config)
    config.limits.check_ceiling(config.exporter.queue_max_bytes)
    return config


def _unknown_variables(env: Mapping[str, str]) -> list[str]:
    """A notice for each SIDECAR_* variable that no setting reads: a misspelled one
    (SIDECAR_EXPORTER_TIMOUT) was ignored without a word, and the default applied."""
    known = {name for section, cls, _ in SECTIONS for f in dataclasses.fields(cls) for name in env_names(section, f)}
    notices = []
    for name in sorted(env):
        if name.startswith("SIDECAR_") and name not in known:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.85)
            hint = f" (did you mean {close[0]}?)" if close else ""
            notices.append(f"{name} is set but no setting reads it: ignored{hint}")
    return notices


#: host names that reach this pod's own loopback listeners
_LOOPBACK = {"localhost", "::1", "0.0.0.0", "::", "ip6-localhost"}


def _is_local(host: str) -> bool:
    host = host.strip("[]").lower()
    return host in _LOOPBACK or host.startswith("127.") or host.endswith(".localhost")


def check_no_loop(config: Config) -> None:
    """Refuse an upstream that is one of the sidecar's own receivers: it would export to itself forever."""
    listeners: list[tuple[str, str, str, int]] = []
    for name, endpoint in config.receivers.listeners():
        host, port = parse_endpoint(endpoint)
        if port:
            listeners.append((name, endpoint, host.strip("[]").lower(), port))
    for signal in Signal:
        exporter = config.exporter_for(signal)
        if exporter.resolved_type != "otlp":
            continue
        url = urlsplit(exporter.url_for(signal))
        host = url.hostname or ""
        port = upstream_port(url.port, url.scheme, exporter.protocol)
        for name, endpoint, listen_host, listen_port in listeners:
            same_host = host == listen_host or (_is_local(host) and _is_local(listen_host))
            if same_host and port == listen_port:
                raise ConfigError(
                    "exporter.endpoint",
                    f"the upstream for {signal.value} ({url.geturl()}) is this sidecar's own listener "
                    f"{name} = {endpoint}: it would export to itself forever. Point "
                    "OTEL_EXPORTER_OTLP_ENDPOINT at the collector (the app's OTEL_* variables are not "
                    "the sidecar's)",
                )


def render_docs() -> str:
    """The text of docs/configuration.md, generated from the declarations above."""
    head = (Path(__file__).parent / "config_docs_head.md").read_text(encoding="utf-8")
    return head.rstrip() + "\n\n" + render_markdown(SECTIONS)


__all__ += ["LogConfig", "PodConfig", "parse_key_values", "render_docs"]
