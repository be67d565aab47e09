"""``print()`` for the embedded engine: regopy has no such built-in.

OPA's ``print`` always succeeds and only writes its arguments (to ``opa test``'s output, to a
server's log). The embedded engine evaluates every ``print(...)`` call as ``true``, its line
breaks kept so that every row stays where the author wrote it; ``policy test`` shows the
output of failing tests from the real ``opa`` when it finds one (:mod:`sidecar.policy.testing`).
"""

from __future__ import annotations


def neutralize_print(source: str) -> str:
    """``source`` with every ``print(...)`` call replaced by ``true`` (line breaks kept)."""
    out: list[str] = []
    at, size = 0, len(source)
    while at < size:
        char = source[at]
        if char == "#":
            end = source.find("\n", at)
            end = size if end < 0 else end
            out.append(source[at:end])
            at = end
        elif char in "\"`":
            end = _string_end(source, at)
            out.append(source[at:end])
            at = end
        elif source.startswith("print", at) and (at == 0 or not (source[at - 1].isalnum() or source[at - 1] in "_.")):
            after = at + 5
            while after < size and source[after] in " \t":
                after += 1
            if after < size and source[after] == "(":
                end = _call_end(source, after)
                out.append("true" + "\n" * source.count("\n", at, end))
                at = end
            else:
                out.append(char)
                at += 1
        else:
            out.append(char)
            at += 1
    return "".join(out)


def _string_end(source: str, start: int) -> int:
    quote = source[start]
    at = start + 1
    while at < len(source):
        if quote == '"' and source[at] == "\\":
            at += 2
            continue
        if source[at] == quote or (quote == '"' and source[at] == "\n"):
            return at + 1
        at += 1
    return len(source)


def _call_end(source: str, open_paren: int) -> int:
    depth, at = 0, open_paren
    while at < len(source):
        char = source[at]
        if char in "\"`":
            at = _string_end(source, at)
            continue
        if char == "#":
            end = source.find("\n", at)
            at = len(source) if end < 0 else end
            continue
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
            if depth == 0:
                return at + 1
        at += 1
    return len(source)
