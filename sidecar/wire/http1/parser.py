"""The pure part of the HTTP/1.1 parser: a request head, its fields and framing, chunk-size and
trailer lines. Strict: what it does not understand is an HttpError with the status to answer."""

from __future__ import annotations

import asyncio

from sidecar.wire.http1.messages import HttpError, Limits, Request

# -- character classes (bytes.translate(None, allowed) leaves only what is not allowed) --------

_TCHAR = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_HEX = b"0123456789abcdefABCDEF"
_VISIBLE = bytes(range(0x21, 0x7F))
_OBS_TEXT = bytes(range(0x80, 0x100))
#: anything that may appear in a request head: no control characters but HTAB, CR, LF
_HEAD_CHARS = b"\t\r\n " + _VISIBLE + _OBS_TEXT
#: a chunk-size line or a trailer line, without its CRLF
_LINE_CHARS = b"\t " + _VISIBLE + _OBS_TEXT
#: a request-target: visible ASCII, no fragment
_TARGET_CHARS = _VISIBLE.replace(b"#", b"")

def parse_head(head: bytes, limits: Limits, transport: asyncio.BaseTransport) -> Request:
    """Validate a request head (without its final CRLFCRLF) and read its framing (RFC 9112):
    the request, or HttpError with the status to answer."""
    if head.translate(None, _HEAD_CHARS):
        raise HttpError(400, "invalid character in the request head")
    lines = head.split(b"\r\n")
    if head.count(b"\r") != len(lines) - 1 or head.count(b"\n") != len(lines) - 1:
        raise HttpError(400, "bare CR or LF in the request head")
    method, target, http10 = _request_line(lines[0], limits)
    if len(lines) - 1 > limits.max_headers:
        raise HttpError(431, "too many header fields")
    headers = _fields(lines)
    path = _path(target, method)
    request = Request(
        method.decode(), target.decode(), path, "HTTP/1.0" if http10 else "HTTP/1.1", headers, transport
    )
    _framing(request, headers, http10, limits)
    request.keep_alive = _keep_alive(headers.get("connection"), http10)
    if not http10 and "host" not in headers:
        raise HttpError(400, "missing Host")
    return request


def _request_line(line: bytes, limits: Limits) -> tuple[bytes, bytes, bool]:
    """Method, target, and whether it is HTTP/1.0."""
    if len(line) > limits.max_request_line:
        raise HttpError(414, "request line too long")
    method, _, rest = line.partition(b" ")
    target, _, version = rest.partition(b" ")
    if not method or method.translate(None, _TCHAR):
        raise HttpError(400, "invalid method")
    if version == b"HTTP/1.1":
        http10 = False
    elif version == b"HTTP/1.0":
        http10 = True
    elif len(version) == 8 and version.startswith(b"HTTP/") and version[5:8:2].isdigit() and version[6] == 46:
        raise HttpError(505, "HTTP version not supported")
    else:
        raise HttpError(400, "invalid request line")
    if not target or target.translate(None, _TARGET_CHARS):
        raise HttpError(400, "invalid request target")
    return method, target, http10


def _framing(request: Request, headers: dict[str, str], http10: bool, limits: Limits) -> None:
    """How the body is delimited (RFC 9112 6.3): chunked, a Content-Length, or none."""
    te = headers.get("transfer-encoding")
    cl = headers.get("content-length")
    if te is not None:
        if cl is not None:
            raise HttpError(400, "both Transfer-Encoding and Content-Length")
        if http10:
            raise HttpError(400, "Transfer-Encoding in an HTTP/1.0 request")
        codings = [c for c in (c.strip(" \t").lower() for c in te.split(",")) if c]
        if codings != ["chunked"]:
            if not codings or "chunked" in codings[:-1]:
                raise HttpError(400, "chunked must be the last transfer coding, and only once")
            raise HttpError(501, "only the chunked transfer coding is supported")
        request.chunked = True
    elif cl is not None:
        if not (cl.isascii() and cl.isdigit()):
            raise HttpError(400, "invalid Content-Length")
        request.content_length = int(cl) if len(cl) <= 18 else limits.max_request_bytes + 1


def _keep_alive(connection: str | None, http10: bool) -> bool:
    if connection is None:
        return not http10
    lowered = connection.lower()
    tokens = (lowered,) if "," not in lowered else [t.strip(" \t") for t in lowered.split(",")]
    return "close" not in tokens and (not http10 or "keep-alive" in tokens)


def _fields(lines: list[bytes]) -> dict[str, str]:
    """The header fields of a head split into lines (the first is the request line); names
    lower-cased, values without surrounding whitespace."""
    headers: dict[str, str] = {}
    for index in range(1, len(lines)):
        raw_name, colon, raw_value = lines[index].partition(b":")
        if not colon or not raw_name or raw_name.translate(None, _TCHAR):
            # also obs-fold (a line starting with whitespace) and whitespace before the colon
            raise HttpError(400, "invalid header field")
        name = raw_name.decode().lower()
        value = raw_value.strip(b" \t").decode("latin-1")
        previous = headers.get(name)
        if previous is None:
            headers[name] = value
        elif name == "content-length":
            if previous != value:
                raise HttpError(400, "conflicting Content-Length values")
        elif name == "host":
            raise HttpError(400, "more than one Host field")
        else:
            headers[name] = f"{previous}, {value}"
    return headers


def _path(target: bytes, method: bytes) -> str:
    """The path of an origin-form or absolute-form request-target, without the query."""
    if target[:1] == b"/":
        return target.split(b"?", 1)[0].decode()
    lowered = target[:8].lower()
    if lowered.startswith((b"http://", b"https://")):
        slash = target.find(b"/", target.find(b"//") + 2)
        return "/" if slash < 0 else target[slash:].split(b"?", 1)[0].decode()
    if target == b"*" and method == b"OPTIONS":
        return "*"
    raise HttpError(400, "invalid request target")


def _chunk_size(line: bytes) -> int:
    """The size on a chunk-size line (extensions are ignored)."""
    if line.translate(None, _LINE_CHARS):
        raise HttpError(400, "invalid chunk-size line")
    semicolon = line.find(b";")
    digits = line if semicolon < 0 else line[:semicolon].rstrip(b" \t")
    if not digits or len(digits) > 15 or digits.translate(None, _HEX):
        raise HttpError(400, "invalid chunk size")
    return int(digits, 16)


def _trailer(line: bytes) -> None:
    """Validate one trailer field line (its content is discarded)."""
    name, colon, _ = line.partition(b":")
    if not colon or not name or name.translate(None, _TCHAR) or line.translate(None, _LINE_CHARS):
        raise HttpError(400, "invalid trailer field")
