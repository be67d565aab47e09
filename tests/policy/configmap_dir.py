"""A directory laid out as the kubelet mounts a ConfigMap or a Secret, updated as it updates one."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


class ConfigMapDir:
    """kubelet's layout: real files under ``..<timestamp>/``, ``..data`` pointing at one,
    and each key a symlink through ``..data``. An update swaps ``..data`` atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.generation = 0
        root.mkdir()

    def publish(self, source: Path, edit=None) -> None:
        self.generation += 1
        version = self.root / f"..2026_11_21_{self.generation:02d}"
        shutil.copytree(source, version)
        if edit is not None:
            edit(version)
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(version.name)
        os.replace(tmp, self.root / "..data")  # the atomic swap
        for entry in version.iterdir():
            link = self.root / entry.name
            if not link.is_symlink():
                link.symlink_to(Path("..data") / entry.name)
