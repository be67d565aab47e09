"""Read the files of an OPA bundle, as untrusted input, within bounds.

A bundle is a gzip'd tarball (what ``opa build`` writes) or a directory laid out the same
way. Only regular files and directories are accepted: a symlink, hard link, device or FIFO,
an absolute or ``..`` path, a name that is not UTF-8 text, more members or more bytes than
the limits allow, each refuse the whole bundle with a :class:`BundleError` naming the member.
Decompression happens in bounded steps, so a gzip bomb costs at most the limit.
"""

from __future__ import annotations

import io
import os
import posixpath
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sidecar.policy.errors import PolicyLoadError

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

#: files the engine reads; others are kept (within the bounds) only to check a signature over them;
#: Wasm modules and plan files are refused
REGO_SUFFIX = ".rego"
DATA_NAMES = ("data.json", "data.yaml", "data.yml")
MANIFEST = ".manifest"
SIGNATURES = ".signatures.json"
_REFUSED_SUFFIXES = (".wasm", "plan.json")
_CHUNK = 64 * 1024


class BundleError(PolicyLoadError):
    """A bundle cannot be used: malformed, over a limit, unsigned, tampered, or overlapping."""


@dataclass(frozen=True)
class BundleLimits:
    """What one bundle may cost: compressed bytes, decompressed bytes, and members."""

    max_download: int = 8 * 1024 * 1024
    max_size: int = 16 * 1024 * 1024
    max_files: int = 2000


#: the JWS algorithms of OPA's bundle signatures; here, not in signing.py, so the command line can
#: offer them without loading cryptography (about 6 MiB resident) into every `otlp-sidecar run`
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
              "HS256", "HS384", "HS512")

def _clean_name(raw: str) -> str:
    """A member's path relative to the bundle root (``opa build`` writes ``/data.json``, ``tar -C
    dir .`` writes ``./data.json``), or BundleError when it is empty or escapes the root."""
    name = raw.replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    if name.startswith("/") and not name.startswith("//"):
        name = name[1:]
    if not name or name.startswith("/") or ".." in name.split("/") or "\0" in name:
        raise BundleError(f"member {raw!r} has a path outside the bundle (empty, absolute or with '..'); refused")
    return posixpath.normpath(name)


def used(name: str) -> bool:
    """Whether the engine reads this bundle file (others are kept only to check a signature)."""
    return name.endswith(REGO_SUFFIX) or posixpath.basename(name) in DATA_NAMES or name in (MANIFEST, SIGNATURES)


def _check_kind(name: str) -> None:
    if name.endswith(_REFUSED_SUFFIXES):
        raise BundleError(f"{name}: Wasm modules and plan bundles are not supported by the embedded engine")


class _BoundedGunzip(io.RawIOBase):
    """gzip decompression that stops with BundleError past ``limit`` output bytes."""

    def __init__(self, raw: bytes, limit: int) -> None:
        self._source = memoryview(raw)
        self._offset = 0
        self._inflate = zlib.decompressobj(zlib.MAX_WBITS | 16)
        self._pending = b""
        self._out = 0
        self._limit = limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        while not self._pending:
            if self._inflate.eof:
                rest = self._inflate.unused_data
                if not rest.strip(b"\0"):
                    return 0
                self._inflate = zlib.decompressobj(zlib.MAX_WBITS | 16)  # a further gzip member
                self._source, self._offset = memoryview(rest), 0
            if self._offset >= len(self._source) and not self._inflate.unconsumed_tail:
                if not self._inflate.eof:
                    raise BundleError("the bundle archive is truncated (gzip stream ends early)")
                return 0
            data = self._inflate.unconsumed_tail or self._source[self._offset:self._offset + _CHUNK]
            if not self._inflate.unconsumed_tail:
                self._offset += len(data)
            try:
                self._pending = self._inflate.decompress(data, _CHUNK)
            except zlib.error as exc:
                raise BundleError(f"the bundle is not a valid gzip archive ({exc})") from None
            self._out += len(self._pending)
            if self._out > self._limit:
                raise BundleError(
                    f"the bundle decompresses to more than {self._limit} bytes (policy.bundle_max_size); refused"
                )
        view = memoryview(buffer).cast("B")
        size = min(len(view), len(self._pending))
        view[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


def read_archive(raw: bytes, limits: BundleLimits) -> dict[str, bytes]:
    """The bundle files of a ``.tar.gz`` (names relative to the bundle root)."""
    if len(raw) > limits.max_download:
        raise BundleError(
            f"the bundle is {len(raw)} bytes, over policy.bundle_max_download_size ({limits.max_download})"
        )
    stream = io.BufferedReader(_BoundedGunzip(raw, limits.max_size + 1024 * 1024))
    files: dict[str, bytes] = {}
    total = 0
    members = 0
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                members += 1
                if members > limits.max_files:
                    raise BundleError(f"the bundle has more than {limits.max_files} members; refused")
                if member.isdir():
                    continue  # nothing is extracted: a directory entry says nothing
                name = _clean_name(member.name)
                if not member.isreg():
                    kind = "symlink" if member.issym() else "hard link" if member.islnk() else "special file"
                    raise BundleError(f"member {name!r} is a {kind}; a bundle holds regular files only")
                total += member.size
                if total > limits.max_size:
                    raise BundleError(
                        f"member {name!r} takes the bundle over policy.bundle_max_size ({limits.max_size} bytes)"
                    )
                _check_kind(name)
                if name in files:
                    raise BundleError(f"member {name!r} appears twice in the bundle")
                handle = tar.extractfile(member)
                files[name] = handle.read() if handle is not None else b""
    except tarfile.TarError as exc:
        raise BundleError(f"the bundle is not a valid tar archive ({exc})") from None
    except (EOFError, OSError) as exc:
        raise BundleError(f"the bundle archive is truncated or unreadable ({exc})") from None
    return files


def read_directory(root: str, limits: BundleLimits) -> dict[str, bytes]:
    """The bundle files of a directory.

    Names starting with ``.`` are skipped (a ConfigMap mount's ``..data``), except the root's
    ``.manifest`` and ``.signatures.json``; symlinks are followed only while they stay inside
    the directory (a ConfigMap's keys are symlinks), one pointing outside refuses the bundle.
    """
    base = Path(root)
    if not base.is_dir():
        raise BundleError(f"bundle directory {root} does not exist or is not a directory")
    real_base = os.path.realpath(base)
    files: dict[str, bytes] = {}
    total = 0
    for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(base).as_posix()
            if name.startswith(".") and rel not in (MANIFEST, SIGNATURES):
                continue
            real = os.path.realpath(path)
            if os.path.commonpath([real, real_base]) != real_base:
                raise BundleError(f"{rel} points outside the bundle directory; refused")
            if not os.path.isfile(real):
                continue
            _check_kind(rel)
            if len(files) >= limits.max_files:
                raise BundleError(f"the bundle has more than {limits.max_files} files; refused")
            total += os.path.getsize(real)
            if total > limits.max_size:
                raise BundleError(f"{rel} takes the bundle over policy.bundle_max_size ({limits.max_size} bytes)")
            with open(real, "rb") as handle:
                files[rel] = handle.read()
    return files


def read_path(path: str, limits: BundleLimits) -> dict[str, bytes]:
    """A bundle from the file system: a directory, or a ``.tar.gz`` file."""
    if os.path.isdir(path):
        return read_directory(path, limits)
    try:
        size = os.path.getsize(path)
        if size > limits.max_download:
            raise BundleError(
                f"{path} is {size} bytes, over policy.bundle_max_download_size ({limits.max_download})"
            )
        with open(path, "rb") as handle:
            raw = handle.read(limits.max_download + 1)
    except OSError as exc:
        raise BundleError(f"cannot read bundle {path}: {exc.strerror}") from None
    return read_archive(raw, limits)
