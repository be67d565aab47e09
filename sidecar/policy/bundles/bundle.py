"""A parsed bundle: its manifest (revision, roots), its policies and its data; several bundles
combined into one policy directory for the loader.

Data files nest at their directory's path (``tenants/acme/data.json`` is ``data.tenants.acme``),
as OPA does. Every package and every data path must lie inside the manifest's roots, and the
roots of the bundles loaded together must not overlap (OPA's rules); both are checked here.
The combined set is written to a fresh directory (``stage``) so that the one loading path of
``sidecar.policy.service`` (child-process precheck, tests, PCI probe, atomic swap) takes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any

import yaml

from sidecar.policy.bundles.archive import DATA_NAMES, MANIFEST, REGO_SUFFIX, SIGNATURES, BundleError, used
from sidecar.policy.bundles.signing import VerificationConfig, verify_bundle
from sidecar.policy.source import _PACKAGE_RE, DataConflict, merge_at

#: values a bundle's data documents may hold together: each costs 50-200 bytes decoded. Bounded
#: on the raw text before a document is decoded (2,000,000 counted after decoding let 15 MiB of
#: `{"a":[{},{},...]}` take 528 MiB before it was refused), and counted again once decoded (YAML
#: aliases can make a small file a huge tree)
MAX_DATA_NODES = 250_000
STAGE_PREFIX = "otlp-sidecar-bundles-"
#: staged directories this process made and has not removed (never swept)
_OURS: set[str] = set()


@dataclass(frozen=True)
class Bundle:
    """One verified, parsed bundle."""

    name: str
    source: str
    revision: str
    roots: tuple[str, ...]
    modules: dict[str, str]  # path -> Rego source
    data: dict[str, Any]
    digest: str
    signed: bool = False
    etag: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        return f"{self.name}@{self.revision or self.digest[:12]}"


def _within(path: str, root: str) -> bool:
    return root == "" or path == root or path.startswith(root + "/")


def overlapping(a: str, b: str) -> bool:
    return _within(a, b) or _within(b, a)


def _count_nodes(value: Any, budget: list[int]) -> None:
    stack = [value]
    while stack:
        item = stack.pop()
        budget[0] -= 1
        if budget[0] < 0:
            raise BundleError(f"a data document holds more than {MAX_DATA_NODES} values; refused")
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _most_values(name: str, raw: bytes) -> int:
    """An upper bound of the values a data document holds, from its text: in JSON every value
    but a container's first follows a comma; in YAML each also starts a line or follows a flow
    comma, or is a key's (after a colon)."""
    count = raw.count(b",") + raw.count(b"[") + raw.count(b"{") + 1
    if name.endswith((".yaml", ".yml")):
        count += raw.count(b"\n") + raw.count(b":")
    return count


def _parse_data(name: str, raw: bytes, budget: list[int]) -> dict[str, Any]:
    if _most_values(name, raw) > budget[0]:
        # counted on the text: a document decoded only to be refused held hundreds of MiB
        raise BundleError(f"may hold more than the {MAX_DATA_NODES} values a bundle's data may hold "
                          "together (counted before decoding); refused", name)
    try:
        text = raw.decode("utf-8")
        document = yaml.safe_load(text) if name.endswith((".yaml", ".yml")) else json.loads(text)
    except (ValueError, yaml.YAMLError, RecursionError) as exc:
        detail = exc.msg if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
        raise BundleError(f"is not valid {'YAML' if name.endswith(('yaml', 'yml')) else 'JSON'} ({detail})",
                          name) from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise BundleError("must hold an object at the top", name)
    _count_nodes(document, budget)
    try:
        json.dumps(document)  # YAML may hold dates and other non-JSON values
    except (TypeError, ValueError) as exc:
        raise BundleError(f"holds a value that is not JSON ({exc})", name) from None
    return document


def merge_into(target: dict[str, Any], path: list[str], document: dict[str, Any], where: str) -> None:
    try:
        merge_at(target, path, document)
    except DataConflict as exc:
        raise BundleError(str(exc), where) from None


def _data_outside(data: dict[str, Any], roots: tuple[str, ...], prefix: str = "") -> str | None:
    """The first data path not inside the roots, or None."""
    for key, value in data.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if any(_within(path, root) for root in roots):
            continue
        if isinstance(value, dict) and any(_within(root, path) for root in roots):
            found = _data_outside(value, roots, path)
            if found:
                return found
            continue
        return path
    return None


def parse_manifest(raw: bytes | None) -> tuple[str, tuple[str, ...], dict[str, Any]]:
    if raw is None:
        return "", ("",), {}
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        raise BundleError("is not valid JSON", MANIFEST) from None
    if not isinstance(manifest, dict):
        raise BundleError("must hold a JSON object", MANIFEST)
    revision = manifest.get("revision", "")
    if not isinstance(revision, str):
        raise BundleError("revision must be a string", MANIFEST)
    roots = manifest.get("roots", [""])
    if not isinstance(roots, list) or not all(isinstance(r, str) for r in roots):
        raise BundleError("roots must be a list of strings", MANIFEST)
    normal = tuple(dict.fromkeys(r.strip("/") for r in roots)) or ("",)
    for i, a in enumerate(normal):
        for b in normal[i + 1:]:
            if overlapping(a, b):
                raise BundleError(f"roots {a!r} and {b!r} overlap", MANIFEST)
    if manifest.get("wasm"):
        raise BundleError("Wasm modules are not supported by the embedded engine", MANIFEST)
    return revision, normal, manifest


def parse_bundle(
    name: str, source: str, files: dict[str, bytes], verification: VerificationConfig | None,
    *, etag: str = "",
) -> Bundle:
    """Verify (when configured) and parse the files of one bundle; BundleError names what is wrong."""
    signed = False
    if verification is not None:
        verify_bundle(files, verification)
        signed = True
    revision, roots, _manifest = parse_manifest(files.get(MANIFEST))
    modules: dict[str, str] = {}
    data: dict[str, Any] = {}
    budget = [MAX_DATA_NODES]
    digest = hashlib.sha256()
    for path in sorted(files):
        raw = files[path]
        if path == SIGNATURES or not used(path):
            continue
        digest.update(path.encode() + b"\0" + raw + b"\0")
        if path.endswith(REGO_SUFFIX):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise BundleError("is not UTF-8 text", path) from None
            match = _PACKAGE_RE.search(text)
            if not match:
                raise BundleError("has no package declaration", path)
            package = match.group(1).replace(".", "/")
            if not any(_within(package, root) for root in roots):
                raise BundleError(
                    f"package {match.group(1)} is outside the bundle's roots {list(roots)} (.manifest)", path)
            modules[path] = text
        elif posixpath.basename(path) in DATA_NAMES:
            document = _parse_data(path, raw, budget)
            parent = posixpath.dirname(path)
            merge_into(data, parent.split("/") if parent else [], document, path)
    outside = _data_outside(data, roots)
    if outside is not None:
        raise BundleError(f"data at {outside!r} is outside the bundle's roots {list(roots)} (.manifest)")
    return Bundle(name=name, source=source, revision=revision, roots=roots, modules=modules, data=data,
                  digest=digest.hexdigest(), signed=signed, etag=etag)


def check_disjoint(bundles: list[Bundle]) -> None:
    """Refuse bundles whose roots overlap (each path of policy and data belongs to one bundle)."""
    for i, a in enumerate(bundles):
        for b in bundles[i + 1:]:
            for root_a in a.roots:
                for root_b in b.roots:
                    if overlapping(root_a, root_b):
                        raise BundleError(
                            f"bundles {a.name!r} and {b.name!r} have overlapping roots "
                            f"({root_a or '<everything>'!r} and {root_b or '<everything>'!r}): bundles loaded "
                            "together must own disjoint parts of data (set \"roots\" in each .manifest)"
                        )


def stage(bundles: list[Bundle], parent: str | None = None) -> str:
    """Write the bundles as one policy directory (a fresh temporary one) and return its path.

    Each bundle's policies keep their paths under a directory named after the bundle (so
    errors name both); the data of all of them goes to one ``data.json`` at the top.
    """
    check_disjoint(bundles)
    if not any(bundle.modules for bundle in bundles):
        raise BundleError("the bundles hold no .rego policies (at least one bundle must carry the policy set)")
    data: dict[str, Any] = {}
    for bundle in bundles:
        merge_into(data, [], bundle.data, f"bundle {bundle.name}")
    root = tempfile.mkdtemp(prefix=f"{STAGE_PREFIX}{os.getpid()}-", dir=parent)
    _OURS.add(os.path.realpath(root))
    try:
        for bundle in bundles:
            for path, text in bundle.modules.items():
                target = os.path.join(root, bundle.name, *path.split("/"))
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with open(target, "w", encoding="utf-8") as handle:
                    handle.write(text)
        with open(os.path.join(root, "data.json"), "w", encoding="utf-8") as handle:
            json.dump(data, handle, sort_keys=True)
    except OSError as exc:
        shutil.rmtree(root, ignore_errors=True)
        raise BundleError(f"cannot write the bundles to {root}: {exc.strerror}") from None
    return root


def sweep_stale_stages(parent: str | None = None) -> int:
    """Remove staged directories left by a process that is gone (killed before it cleaned up; in a
    pod, /tmp is an emptyDir that outlives a container restart). Call before staging anything."""
    base = parent or tempfile.gettempdir()
    removed = 0
    try:
        names = os.listdir(base)
    except OSError:
        return 0
    for name in names:
        if not name.startswith(STAGE_PREFIX):
            continue
        pid_text = name[len(STAGE_PREFIX):].split("-", 1)[0]
        pid = int(pid_text) if pid_text.isdigit() else 0
        if pid and pid != os.getpid() and _alive(pid):
            continue  # another live sidecar's (tests run several on one machine)
        if os.path.realpath(os.path.join(base, name)) in _OURS:
            continue
        shutil.rmtree(os.path.join(base, name), ignore_errors=True)
        removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stage(root: str) -> None:
    if root and os.path.basename(root).startswith(STAGE_PREFIX):
        shutil.rmtree(root, ignore_errors=True)
        _OURS.discard(os.path.realpath(root))
