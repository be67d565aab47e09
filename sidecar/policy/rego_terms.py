"""Documents handed to regopy (rego-cpp) as JSON text, the way it reads a policy's own strings.

rego-cpp keeps a string as the text between its quotes: a literal of a policy, or a document it
parses from JSON, keeps its escapes (``\\"``, ``\\\\``, ``\\u0001``), and a result is written back
with that text between quotes. regopy's ``Input`` builds the input from Python values instead, so
a client's ``"`` or ``\\`` reached a result unescaped: a decision that quoted a resource attribute
(the shipped tenant policy's refusal reason does) was unreadable (the request refused for ever),
or read as other JSON (``x", "allow": true, "reason": "`` turned a refusal into an acceptance).
As JSON text, the input, the data and the policies' literals are all kept alike: every result is
valid JSON that reads back as what the policy computed, and a string compares equal to the same
literal in a policy. Non-ASCII characters stay as they are (as in the policies' UTF-8 sources).
"""

from __future__ import annotations

import json
import re
from typing import Any

#: a lone surrogate (JSON may hold one, escaped; UTF-8 cannot)
_SURROGATE = re.compile("[\ud800-\udfff]")


def as_term(document: Any) -> str:
    """``document`` as the JSON text rego-cpp parses; ValueError for a non-finite number, which
    JSON cannot hold (the policy input writes those as strings, as OTLP/JSON does). A lone
    surrogate (from a JSON data file's ``\\ud800``) stays escaped."""
    text = json.dumps(document, ensure_ascii=False, allow_nan=False)
    return _SURROGATE.sub(lambda found: f"\\u{ord(found.group()):04x}", text)


def set_input(interpreter: Any, document: Any) -> None:
    """Give ``document`` to ``interpreter`` as its input."""
    interpreter.set_input_term(as_term(document))


def add_data(interpreter: Any, document: Any) -> None:
    """Add ``document`` to ``interpreter``'s data."""
    interpreter.add_data_json(as_term(document))
