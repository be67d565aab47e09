"""The Dockerfile's shape (no container engine runs here, so the image is not built in tests).

What can be checked without building: two stages with the compiler only in the first,
a numeric non-root user in the final one, sources that exist and are not excluded by
.dockerignore, and a default command the CLI knows.
"""

from __future__ import annotations

import fnmatch
import json
import re

from sidecar.cli import build_parser
from tests.helm.conftest import REPO


def stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuations joined), split by FROM."""
    text = (REPO / "Dockerfile").read_text(encoding="utf-8")
    lines = [
        line for line in text.replace("\\\n", " ").splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]
    out: list[list[str]] = []
    for line in lines:
        if line.startswith("FROM "):
            out.append([])
        if out:
            out[-1].append(line)
    return out


def test_multi_stage_build_compiles_in_the_first_stage_only() -> None:
    build, final = stages()
    assert " AS build" in build[0]
    build_text, final_text = "\n".join(build), "\n".join(final)
    assert "gcc" in build_text and "pip install" in build_text
    assert "C extensions built" in build_text  # the build fails if the Cython modules are missing
    assert "gcc" not in final_text and "pip install" not in final_text
    assert "COPY --from=build /opt/otlp-sidecar /opt/otlp-sidecar" in final_text


def test_final_stage_runs_as_numeric_non_root() -> None:
    final = stages()[-1]
    users = [line.split()[1] for line in final if line.startswith("USER ")]
    assert users, "the final stage sets a USER"
    uid, _, gid = users[-1].partition(":")
    assert uid == "65532" and gid == "65532"


def test_default_command_is_the_sidecar() -> None:
    final = stages()[-1]
    cmd = json.loads(next(line for line in final if line.startswith("CMD ")).removeprefix("CMD "))
    assert cmd[0] == "otlp-sidecar"
    assert build_parser().parse_args(cmd[1:]).command == "run"


def test_copied_sources_exist_and_are_not_ignored() -> None:
    ignored = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources: list[str] = []
    for line in stages()[0]:
        if line.startswith("COPY ") and "--from" not in line:
            sources += line.split()[1:-1]
    assert {"setup.py", "pyproject.toml", "sidecar", "ext"} <= set(sources)
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"
        assert not any(fnmatch.fnmatch(source, pattern) for pattern in ignored), source
    for pattern in (".venv", ".git", "tests"):
        assert pattern in ignored
    assert re.search(r"^\*\*/\*\.so$", "\n".join(ignored), re.M), "host-built extensions stay out"
