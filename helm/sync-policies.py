#!/usr/bin/env python3
"""Copy the repo's policies/ into the Helm chart and into the package (its bundled set).

A chart can only read files inside itself, and ``otlp-sidecar run`` with no policy
directory applies the set shipped inside the package (sidecar/policy/bundled/).

    python helm/sync-policies.py          # write both copies
    python helm/sync-policies.py --check  # exit 1 and list the differences if a copy drifted

The chart's ConfigMap flattens each file's path into a key (``/`` becomes ``__``,
``pci/pci.rego`` -> ``pci__pci.rego``) and the sidecar's volume restores the tree
with ``items`` paths, so file names must not contain ``__`` themselves.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "policies"
TARGET = REPO / "helm" / "otlp-sidecar" / "policies"
BUNDLED = REPO / "sidecar" / "policy" / "bundled"
#: every copy of policies/ the repository ships
TARGETS = (TARGET, BUNDLED)
KEY_SEPARATOR = "__"
_CONFIGMAP_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


def policy_files(root: Path) -> dict[str, bytes]:
    """Relative path (with ``/``) -> content of every file under ``root``."""
    if not root.is_dir():
        return {}
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def configmap_key(relative: str) -> str:
    """The ConfigMap key of a policy file: its path with ``/`` replaced by ``__``."""
    return relative.replace("/", KEY_SEPARATOR)


def problems(files: dict[str, bytes]) -> list[str]:
    """Why some files cannot be shipped in the ConfigMap (empty when all can)."""
    found = []
    for relative in files:
        if any(KEY_SEPARATOR in part for part in relative.split("/")):
            found.append(f"{relative}: a name with '{KEY_SEPARATOR}' cannot be flattened unambiguously")
        elif not _CONFIGMAP_KEY.match(configmap_key(relative)) or len(configmap_key(relative)) > 253:
            found.append(f"{relative}: not a valid ConfigMap key once flattened")
    return found


def differences(source: Path = SOURCE, target: Path = TARGET) -> list[str]:
    """Files that differ between ``source`` and its copy ``target``."""
    want, have = policy_files(source), policy_files(target)
    out = [f"missing in the chart: {p}" for p in sorted(want.keys() - have.keys())]
    out += [f"not in policies/: {p}" for p in sorted(have.keys() - want.keys())]
    out += [f"differs: {p}" for p in sorted(want.keys() & have.keys()) if want[p] != have[p]]
    return out


def sync(source: Path = SOURCE, target: Path = TARGET) -> None:
    """Make ``target`` an exact copy of ``source``."""
    if target.exists():
        shutil.rmtree(target)
    for relative, content in policy_files(source).items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report drift (exit 1 if any)")
    args = parser.parse_args(argv)
    bad = problems(policy_files(SOURCE))
    if bad:
        print("\n".join(bad), file=sys.stderr)
        return 1
    if args.check:
        drift = [f"{t.relative_to(REPO)}: {d}" for t in TARGETS for d in differences(SOURCE, t)]
        if drift:
            print("\n".join(drift), file=sys.stderr)
            print("run: python helm/sync-policies.py", file=sys.stderr)
            return 1
        return 0
    for target in TARGETS:
        sync(SOURCE, target)
        print(f"copied {len(policy_files(SOURCE))} files from policies/ to {target.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
