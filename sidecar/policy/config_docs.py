"""The ``[policy]`` section of docs/policy.md, generated from :class:`PolicyConfig`
(``python -m sidecar.policy.config_docs docs/policy.md``, run by ``make docs``).

The section sits between two markers in the hand-written page; the rest of the page is left as it
is. ``tests/policy/test_docs.py`` fails when the section and the code differ.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sidecar.configkit import render_markdown
from sidecar.policy.config import PolicyConfig

BEGIN, END = "<!-- BEGIN policy config -->", "<!-- END policy config -->"


def section() -> str:
    """The settings of ``[policy]`` as markdown, without the section's heading."""
    rendered = render_markdown([("policy", PolicyConfig, PolicyConfig.__doc__ or "")]).strip()
    return rendered.split("\n", 2)[2].strip()


def rewrite(page: str) -> str:
    """``page`` with the text between the markers replaced by :func:`section`."""
    start, end = page.index(BEGIN) + len(BEGIN), page.index(END)
    return f"{page[:start]}\n{section()}\n{page[end:]}"


def main(argv: list[str]) -> int:
    path = Path(argv[1] if len(argv) > 1 else "docs/policy.md")
    path.write_text(rewrite(path.read_text(encoding="utf-8")), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
