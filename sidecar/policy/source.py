"""Read a policy directory: its .rego modules, its data.json documents, its version.

A Kubernetes ConfigMap mount keeps the real files under a timestamped directory
and swaps the ``..data`` symlink atomically on update; names starting with ``.``
(``..data``, ``..2024_01_01...``) are skipped and the visible symlinks followed.
The version is a content hash, so the same set has the same version everywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sidecar.policy.errors import PolicyLoadError

_PACKAGE_RE = re.compile(r"^package\s+([A-Za-z_][\w.]*)", re.MULTILINE)
_TEST_RULE_RE = re.compile(r"^(test_\w+)\b", re.MULTILINE)
DATA_FILE = "data.json"
#: the policy set shipped inside the package (a copy of the repository's policies/,
#: kept in step by helm/sync-policies.py): what applies when policy.dir is empty
BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"


@dataclass(frozen=True)
class PolicyModule:
    """One .rego file: its path relative to the policy directory and its package."""

    path: str
    source: str
    package: str

    @property
    def is_test(self) -> bool:
        return self.path.endswith("_test.rego")

    def test_rules(self) -> list[str]:
        """The ``test_*`` rules the file defines, in order, each once."""
        return list(dict.fromkeys(_TEST_RULE_RE.findall(self.source)))


@dataclass(frozen=True)
class PolicySet:
    """A policy directory read at one moment."""

    root: str
    modules: tuple[PolicyModule, ...]
    data: dict[str, Any] = field(default_factory=dict)
    data_files: tuple[str, ...] = ()
    version: str = ""

    def file_of_package(self, package: str) -> str:
        """The file that declares ``package`` (the first, when several share it)."""
        for module in self.modules:
            if module.package == package and not module.is_test:
                return module.path
        return ""

    @property
    def files(self) -> list[str]:
        return [m.path for m in self.modules] + list(self.data_files)


def _visible_files(root: Path) -> list[Path]:
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            if name.endswith(".rego") or name == DATA_FILE:
                found.append(Path(dirpath) / name)
    return found


def snapshot(root: str) -> tuple[Any, ...]:
    """A cheap fingerprint of the directory: the ``..data`` target and each file's stat.

    When it is unchanged, the content is too (the watcher then skips hashing).
    """
    base = Path(root)
    entries: list[Any] = [os.path.realpath(base / "..data") if (base / "..data").exists() else ""]
    try:
        for path in _visible_files(base):
            try:
                st = path.stat()
            except OSError:
                continue
            entries.append((str(path), st.st_ino, st.st_mtime_ns, st.st_size))
    except OSError:
        entries.append("unreadable")
    return tuple(entries)


def read_policy_dir(root: str) -> PolicySet:
    """Read every .rego and data.json under ``root``; raise PolicyLoadError naming the file."""
    base = Path(root)
    if not base.is_dir():
        raise PolicyLoadError(f"policy directory {root} does not exist or is not a directory")
    digest = hashlib.sha256()
    modules: list[PolicyModule] = []
    data: dict[str, Any] = {}
    data_files: list[str] = []
    for path in _visible_files(base):
        rel = path.relative_to(base).as_posix()
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise PolicyLoadError(f"cannot read: {exc.strerror}", rel) from None
        digest.update(rel.encode() + b"\0" + raw + b"\0")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise PolicyLoadError("is not UTF-8 text", rel) from None
        if path.name == DATA_FILE:
            _merge_data(data, rel, text)
            data_files.append(rel)
            continue
        match = _PACKAGE_RE.search(text)
        if not match:
            raise PolicyLoadError("has no package declaration", rel)
        modules.append(PolicyModule(rel, text, match.group(1)))
    if not modules:
        raise PolicyLoadError(f"policy directory {root} holds no .rego files")
    return PolicySet(
        root=str(base), modules=tuple(modules), data=data, data_files=tuple(data_files),
        version=digest.hexdigest()[:16],
    )


def _merge_data(data: dict[str, Any], rel: str, text: str) -> None:
    """Merge a data.json under the path of its directory (as ``opa run DIR`` does)."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PolicyLoadError(f"is not valid JSON: {exc.msg} at line {exc.lineno}", rel) from None
    if not isinstance(document, dict):
        raise PolicyLoadError("must hold a JSON object", rel)
    try:
        merge_at(data, list(Path(rel).parent.parts), document)
    except DataConflict as exc:
        raise PolicyLoadError(str(exc), rel) from None


class DataConflict(ValueError):
    """Two data documents set the same key (or a key where an object must be)."""


def merge_at(data: dict[str, Any], path: list[str], document: dict[str, Any]) -> None:
    """Merge ``document`` into ``data`` under ``path`` (as OPA nests a data file at its
    directory); raise DataConflict where two documents set the same key."""
    target = data
    for part in path:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise DataConflict(f"conflicts with data at {part}")
    _deep_merge(target, document)


def _deep_merge(target: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if key in target and isinstance(target[key], dict) and isinstance(value, dict):
            _deep_merge(target[key], value)
        elif key in target:
            raise DataConflict(f"sets data key {key!r} that another data file already sets")
        else:
            target[key] = value
