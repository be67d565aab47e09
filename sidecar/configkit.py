"""Declarative config sections: one frozen dataclass per component.

A component declares its settings with :func:`setting`; :func:`load_section`
builds it from the TOML table and the environment (``SIDECAR_<SECTION>_<KEY>``,
or the explicit ``env`` names a setting carries), converts and validates every
value, and raises :class:`ConfigError` naming the key and what is allowed.
``docs/configuration.md`` is generated from the same declarations
(:func:`render_markdown`), so the docs cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")

#: kinds a setting can have; each has a parser for TOML values and env strings
KINDS = ("str", "int", "float", "bool", "duration", "size", "list", "map", "path", "endpoint")

_MISSING = object()


class ConfigError(ValueError):
    """A configuration value is wrong; ``key`` is its dotted name (``exporter.timeout``)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def setting(
    default: Any,
    doc: str,
    *,
    kind: str = "str",
    choices: Sequence[str] | None = None,
    min: float | None = None,
    max: float | None = None,
    env: Sequence[str] = (),
    secret: bool = False,
    check: Callable[[Any], str | None] | None = None,
) -> Any:
    """Declare one setting of a config section (use as a dataclass field default)."""
    if kind not in KINDS:
        raise ValueError(f"unknown setting kind {kind!r}")
    meta = {
        "doc": doc,
        "kind": kind,
        "choices": tuple(choices) if choices else None,
        "min": min,
        "max": max,
        "env": tuple(env),
        "secret": secret,
        "check": check,
    }
    if isinstance(default, list | dict):
        factory = (lambda d=default: type(d)(d))  # noqa: E731
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


_DURATION_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h)?\s*$")
_SIZE_RE = re.compile(r"^\s*([0-9]+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2, "gb": 1000**3, "gib": 1024**3,
}
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

#: longest duration a setting takes when it declares no ``max`` (a day)
DURATION_MAX = 86400.0


def _parse(kind: str, value: Any, from_env: bool) -> Any:
    """Convert ``value`` to the setting's kind, or raise ValueError with what is allowed."""
    if kind in ("str", "path"):
        if not isinstance(value, str):
            raise ValueError("must be a string")
        return value
    if kind == "endpoint":
        if not isinstance(value, str):
            raise ValueError("must be a string host:port")
        parse_endpoint(value)
        return value
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and from_env:
            low = value.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
        raise ValueError("must be true or false")
    if kind == "int":
        if isinstance(value, bool):
            raise ValueError("must be an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, str) and from_env and re.fullmatch(r"\s*-?[0-9]+\s*", value):
            return int(value)
        raise ValueError("must be an integer")
    if kind == "float":
        if isinstance(value, bool):
            raise ValueError("must be a number")
        if isinstance(value, int | float):
            number = float(value)
        elif isinstance(value, str) and from_env:
            try:
                number = float(value)
            except ValueError:
                raise ValueError("must be a number") from None
        else:
            raise ValueError("must be a number")
        if not math.isfinite(number):
            raise ValueError("must be a finite number")
        return number
    if kind == "duration":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            match = _DURATION_RE.match(value)
            if match:
                return float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]
        raise ValueError(
            "must be a duration: a string with a unit like '500ms', '5s', '2m', '1h', or a bare number of seconds"
        )
    if kind == "size":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            match = _SIZE_RE.match(value)
            if match:
                return int(match.group(1)) * _SIZE_UNITS[(match.group(2) or "b").lower()]
        raise ValueError("must be a size: bytes as an integer, or a string like '4MiB', '512KiB'")
    if kind == "list":
        if isinstance(value, str) and from_env:
            return [item.strip() for item in value.split(",") if item.strip()]
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return list(value)
        raise ValueError("must be a list of strings")
    if kind == "map":
        if isinstance(value, str) and from_env:
            return parse_key_values(value)
        if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
            return dict(value)
        raise ValueError("must be a table of strings")
    raise AssertionError(kind)


def parse_key_values(text: str) -> dict[str, str]:
    """Parse ``k1=v1,k2=v2`` (the OTEL_EXPORTER_OTLP_HEADERS format, values URL-decoded)."""
    from urllib.parse import unquote

    result: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"must be a list of key=value pairs separated by commas, got {item!r}")
        result[unquote(key.strip())] = unquote(val.strip())
    return result


def http_url_problem(value: str, example: str) -> str | None:
    """Why ``value`` is not an http or https URL with a host (and a valid port, if any), or None.
    A malformed one (``http://[``) is a message here, never an exception from ``urlsplit``."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        return f"is not a valid URL (such as {example}): a bracketed IPv6 host or the port is malformed"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"must be a URL such as {example} (scheme http or https)"
    return None


def parse_endpoint(value: str) -> tuple[str, int]:
    """Split ``host:port`` (IPv6 as ``[::1]:4317``); raise ValueError naming the problem."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"must be host:port, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    number = int(port)
    if not 0 <= number <= 65535:
        raise ValueError(f"port must be between 0 and 65535, got {number}")
    return host, number


#: the key a ConfigError about the config file itself (missing, unreadable, not TOML) names
CONFIG_FILE = "config file"


def read_toml(
    path: str | os.PathLike[str] | None, sections: Sequence[str], keys: Mapping[str, Collection[str]] | None = None,
) -> dict[str, Any]:
    """Read a TOML config file whose top level holds only the tables ``sections``.

    No path gives an empty dict; every problem is a ConfigError naming the file or the section. A
    key written at the top level is named with the sections that have it (``keys``: each
    section's keys).
    """
    if not path:
        return {}
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(CONFIG_FILE, f"file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(CONFIG_FILE, f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(CONFIG_FILE, f"{path} is not valid TOML: {exc}") from None
    for key, value in data.items():
        if key not in sections:
            owners = [name for name in sections if key in (keys or {}).get(name, ())]
            if owners and not isinstance(value, dict):
                tables = " or ".join(f"[{name}]" for name in owners)
                raise ConfigError(key, f"a key belongs in its section's table: write it under {tables}")
            raise ConfigError(key, "unknown section; the sections are: " + ", ".join(sorted(sections)))
        if not isinstance(value, dict):
            raise ConfigError(key, f"must be a table ([{key}])")
    return data


def env_names(section: str, field: dataclasses.Field[Any]) -> tuple[str, ...]:
    """The environment variables that set a field, most specific first."""
    derived = f"SIDECAR_{section.upper()}_{field.name.upper()}"
    names = tuple(field.metadata.get("env", ()))
    return (*names, derived) if derived not in names else names


def load_section(
    cls: type[T],
    section: str,
    data: Mapping[str, Any] | None,
    env: Mapping[str, str],
) -> T:
    """Build the section ``cls`` from its TOML table and the environment (env wins)."""
    data = dict(data or {})
    # every section is a dataclass; T is left unbound (a bound to DataclassInstance would reach every caller)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in data:
        if key not in known:
            allowed = ", ".join(sorted(known))
            raise ConfigError(f"{section}.{key}", f"unknown key; the keys of [{section}] are: {allowed}")
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]  # a dataclass, as above
        meta = field.metadata
        dotted = f"{section}.{field.name}"
        raw: Any = _MISSING
        from_env = False
        for name in env_names(section, field):
            if name in env:
                raw, from_env, dotted = env[name], True, f"{dotted} (from {name})"
                break
        if raw is _MISSING and field.name in data:
            raw = data[field.name]
        if raw is _MISSING:
            continue
        try:
            value = _parse(meta["kind"], raw, from_env)
        except ValueError as exc:
            raise ConfigError(dotted, str(exc)) from None
        _check(dotted, meta, value)
        values[field.name] = value
    obj = cls(**values)
    post = getattr(obj, "validate", None)
    if callable(post):
        post()
    return obj


def _check(dotted: str, meta: Mapping[str, Any], value: Any) -> None:
    choices = meta.get("choices")
    if choices and value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ConfigError(dotted, f"{value!r} is not allowed; choose one of {allowed}")
    low, high = meta.get("min"), meta.get("max")
    if meta.get("kind") == "duration":
        high = DURATION_MAX if high is None else high
        if low is not None and value < low:
            raise ConfigError(dotted, f"must be at least {_seconds(low)}, got {_seconds(value)}")
        if value > high:
            raise ConfigError(
                dotted,
                f"must be at most {_seconds(high)}, got {_seconds(value)} (a bare number is seconds: "
                f"write '{value:g}ms' if you meant milliseconds)",
            )
    if low is not None and value < low:
        raise ConfigError(dotted, f"must be at least {low}, got {value}")
    if high is not None and value > high:
        raise ConfigError(dotted, f"must be at most {high}, got {value}")
    check = meta.get("check")
    if check is not None:
        problem = check(value)
        if problem:
            raise ConfigError(dotted, problem)


def _seconds(value: float) -> str:
    return f"{value:g} s"


def redacted(obj: Any) -> dict[str, Any]:
    """The section as a dict with secret settings replaced, safe to log or print (JSON keys)."""
    out: dict[str, Any] = {}
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        if field.metadata.get("secret") and value:
            value = "<redacted>"
        elif dataclasses.is_dataclass(value):
            value = redacted(value)
        elif isinstance(value, dict):
            # e.g. Config.signal_exporters: keyed by an enum, values are sections
            value = {
                str(getattr(key, "value", key)): redacted(item) if dataclasses.is_dataclass(item) else item
                for key, item in value.items()
            }
        out[field.name] = value
    return out


def _kind_doc(meta: Mapping[str, Any]) -> str:
    """How the docs name a setting's kind (durations say their unit and bounds)."""
    if meta["kind"] != "duration":
        return str(meta["kind"])
    high = DURATION_MAX if meta.get("max") is None else meta["max"]
    return f"duration: `'500ms'`, `'5s'`, `'2m'`, or a bare number of seconds; at most {_seconds(high)}"


def render_markdown(sections: Sequence[tuple[str, type[Any], str]]) -> str:
    """Document sections as markdown: ``(name, class, description)`` each."""
    lines: list[str] = []
    for name, cls, description in sections:
        lines += [f"## `[{name}]`", "", description.strip(), ""]
        for field in dataclasses.fields(cls):
            meta = field.metadata
            if field.default is not dataclasses.MISSING:
                default = field.default
            elif field.default_factory is not dataclasses.MISSING:
                default = field.default_factory()
            else:
                default = "(required)"
            env = ", ".join(f"`{e}`" for e in env_names(name, field))
            lines.append(f"- `{field.name}` (default = `{default!r}`; {_kind_doc(meta)}): {meta['doc']}")
            if meta.get("choices"):
                lines.append("  Allowed: " + ", ".join(f"`{c}`" for c in meta["choices"]) + ".")
            lines.append(f"  Environment: {env}.")
        lines.append("")
    return "\n".join(lines)
