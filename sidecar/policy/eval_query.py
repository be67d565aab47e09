"""``policy eval QUERY``: evaluate a Rego query like ``opa eval -d DIR -i INPUT QUERY``.

The query runs on the embedded engine (regopy) over the set's modules and data, in a child
process (rego-cpp may abort on some input; the CLI must not). Output formats follow
``opa eval``: ``json`` (``{"result": [{"expressions": [{"value", "text"}], "bindings"}]}``,
``{}`` when undefined), ``raw`` (the values), ``pretty`` (indented values). Exit codes as
``opa eval``: 0 (also when undefined, unless ``--fail``: then 1), 2 on an error.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Any

CHILD_TIMEOUT = 60.0
_WITH_INPUT_RE = re.compile(r"\bwith\s+input(?:\.[\w.]+)?\s+as\b")


def evaluate(root: str, query: str, input_document: Any) -> dict[str, Any]:
    """``{"result": [...]}`` (OPA's shape, none when undefined) or ``{"errors": [{"message"}]}``."""
    if _WITH_INPUT_RE.search(query):
        return {"errors": [{"message": "`with input as` is not supported by the embedded engine "
                                       "(regopy 1.5 crashes on it): give the input with --input"}]}
    payload = json.dumps({"root": root, "query": query, "input": input_document})
    try:
        child = subprocess.run(
            [sys.executable, "-m", "sidecar.policy.eval_query"], input=payload, capture_output=True,
            text=True, timeout=CHILD_TIMEOUT, check=False,
        )
    except subprocess.TimeoutExpired:
        return {"errors": [{"message": f"the query took longer than {CHILD_TIMEOUT:.0f} s"}]}
    if child.returncode < 0:
        return {"errors": [{"message": f"the embedded engine (regopy) crashed (signal {-child.returncode})"}]}
    try:
        result: dict[str, Any] = json.loads(child.stdout)  # the child prints one object
    except json.JSONDecodeError:
        detail = (child.stderr.strip().splitlines() or ["no output"])[-1]
        return {"errors": [{"message": detail}]}
    return result


def _child() -> int:
    """In the child: read {root, query, input} on stdin, print the OPA-shaped result."""
    from sidecar.policy import rego_terms
    from sidecar.policy.embedded import _error_tree, regopy
    from sidecar.policy.errors import PolicyLoadError
    from sidecar.policy.rego_errors import error_messages, format_rego_error
    from sidecar.policy.source import read_policy_dir
    from sidecar.policy.testing_print import neutralize_print

    request = json.loads(sys.stdin.read())
    interpreter = regopy.Interpreter()
    interpreter.log_level = regopy.LogLevel.NONE
    sources: dict[str, str] = {}
    try:
        root = request["root"]
        if root and os.path.isfile(root):  # -d FILE, as opa eval takes one file
            with open(root, encoding="utf-8") as handle:
                text = handle.read()
            if root.endswith(".json"):
                rego_terms.add_data(interpreter, json.loads(text))
            else:
                sources[root] = text
                interpreter.add_module(root, neutralize_print(text))
        elif root:
            policy_set = read_policy_dir(root)
            for module in policy_set.modules:
                sources[module.path] = module.source
                interpreter.add_module(module.path, neutralize_print(module.source))
            rego_terms.add_data(interpreter, policy_set.data)
        if request["input"] is not None:
            rego_terms.set_input(interpreter, request["input"])
        output = interpreter.query(request["query"])
    except (PolicyLoadError, OSError, ValueError) as exc:
        print(json.dumps({"errors": [{"message": str(exc)}]}))
        return 0
    except regopy.RegoError as exc:
        print(json.dumps({"errors": [{"message": format_rego_error(str(exc), sources)}]}))
        return 0
    text = str(output)
    if not output.ok() or text.startswith("(error"):
        tree = _error_tree(output.node()._impl) if not output.ok() else text
        detail = "; ".join(error_messages(tree)) or format_rego_error(text, sources)
        print(json.dumps({"errors": [{"message": f"the query cannot be evaluated: {detail}"}]}))
        return 0
    print(json.dumps(_as_opa(text, request["query"])))
    return 0


def _as_opa(text: str, query: str) -> dict[str, Any]:
    """regopy's output as ``opa eval``'s JSON result."""
    if text.strip() == "undefined":
        return {}
    document = json.loads(text)
    rows = document if isinstance(document, list) else [document]
    parts = [p.strip() for p in re.split(r";|\n", query) if p.strip()]
    result: list[dict[str, Any]] = []
    for row in rows:
        values = row.get("expressions", [])
        # regopy adds expressions of its own for assignments: texts only when they line up
        texts = parts if len(parts) == len(values) else [query.strip()] * len(values)
        entry: dict[str, Any] = {"expressions": [
            {"value": v, "text": t, "location": _location(query, t)} for v, t in zip(values, texts, strict=False)
        ]}
        bindings = {k: v for k, v in (row.get("bindings") or {}).items()
                    if k not in ("input", "data") and not k.startswith(("$", "_"))}
        if bindings:
            entry["bindings"] = bindings
        result.append(entry)
    return {"result": result}


def _location(query: str, text: str) -> dict[str, int]:
    at = max(0, query.find(text))
    return {"row": query.count("\n", 0, at) + 1, "col": at - (query.rfind("\n", 0, at) + 1) + 1}


def render(outcome: dict[str, Any], output_format: str) -> str:
    """The result in ``json`` (OPA's document), ``raw`` or ``pretty`` form."""
    if output_format == "json" or "errors" in outcome:
        return json.dumps(outcome, indent=2, sort_keys=False)
    rows = outcome.get("result", [])
    if output_format == "raw":
        return "\n".join(
            json.dumps(e["value"]) if not isinstance(e["value"], str) else e["value"]
            for row in rows for e in row["expressions"]
        )
    if not rows:
        return "undefined"
    return "\n".join(
        json.dumps(row["bindings"] if row.get("bindings") else row["expressions"][-1]["value"], indent=2)
        for row in rows
    )


if __name__ == "__main__":
    sys.exit(_child())
