"""Turn rego-cpp's error trees into one readable line (``file:line:col: message``)."""

from __future__ import annotations

import re

_ERROR_RE = re.compile(r"\(error (\d+):")
_MSG_RE = re.compile(r"\(errormsg (\d+):")
_CODE_RE = re.compile(r"\(rego-errorcode\s*(?:(\d+):)?")


def _length_prefixed(text: str, match: re.Match[str]) -> str:
    start = match.end()
    return text[start : start + int(match.group(1))]


def format_rego_error(text: str, sources: dict[str, str]) -> str:
    """The first error of a rego-cpp error dump, located in ``sources`` when possible."""
    messages = [_length_prefixed(text, m) for m in _MSG_RE.finditer(text)]
    message = messages[0] if messages else text.strip().splitlines()[0] if text.strip() else "error"
    where = ""
    error = _ERROR_RE.search(text)
    if error:
        location = _length_prefixed(text, error)
        rest = text[error.end() + len(location) :]
        offset = re.match(r"\|(\d+)\|", rest)
        if location in sources:
            where = location
            if offset:
                where += ":" + _line_col(sources[location], int(offset.group(1)))
        elif location:
            where = location
    extra = f" (and {len(messages) - 1} more)" if len(messages) > 1 else ""
    return f"{where}: {message}{extra}" if where else f"{message}{extra}"


def _line_col(source: str, offset: int) -> str:
    head = source.encode("utf-8")[:offset].decode("utf-8", errors="ignore")
    line = head.count("\n") + 1
    col = len(head) - (head.rfind("\n") + 1) + 1
    return f"{line}:{col}"


def error_messages(text: str) -> list[str]:
    """Every ``errormsg`` of an evaluation error dump."""
    return [_length_prefixed(text, m) for m in _MSG_RE.finditer(text)]
