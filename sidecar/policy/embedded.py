"""The embedded back-end: Rego evaluated in-process with regopy (rego-cpp).

A policy set is compiled ONCE per version into a regopy bundle with one
entrypoint per rule the sidecar queries (``decisions``, ``pod_settings``) and per
``test_*`` rule; each query then runs the compiled plan (about a quarter of the
cost of ``Interpreter.query``, which recompiles every time).

rego-cpp is not known to be thread-safe, even across interpreters: every call into it
(compile, query, tests, freeing) holds :data:`ENGINE_LOCK`. The sidecar runs its queries on
one engine thread (:mod:`sidecar.policy.worker`), so the lock is rarely contended.

Memory: ``librego_shared.so`` exports its own ``operator new``/``delete``. When libstdc++ is
already loaded before it (``google._upb._message`` links it, as any C++ extension does), the
libstdc++ code rego-cpp calls keeps glibc's new/delete while rego-cpp's own code uses its
bundled allocator: memory crosses allocators and about 65 KiB per evaluation is never given
back. :func:`_share_libstdcxx` loads libstdc++ into the global scope BEFORE regopy is imported,
so both resolve to one allocator (docs/policy-engine.md).
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from sidecar.masked_text import loggable
from sidecar.policy import rego_terms
from sidecar.policy.errors import DecisionError, PolicyLoadError
from sidecar.policy.rego_errors import error_messages, format_rego_error
from sidecar.policy.source import PolicySet
from sidecar.policy.testing_print import neutralize_print


def _share_libstdcxx() -> bool:
    """Load libstdc++ with RTLD_GLOBAL (promoting it when already loaded) before regopy.

    True when it worked; False when regopy was imported already (too late) or libstdc++ is
    not found (then regopy brings its own and nothing is mixed either).
    """
    if "regopy" in sys.modules:
        return False
    try:
        ctypes.CDLL("libstdc++.so.6", mode=os.RTLD_GLOBAL)
    except OSError:
        return False
    return True


#: whether libstdc++ was shared before regopy loaded (shown in docs and checked by tests)
LIBSTDCXX_SHARED = _share_libstdcxx()

import regopy as regopy  # noqa: E402 - after _share_libstdcxx, on purpose; re-exported for that reason
from regopy import rego_shared  # noqa: E402

#: held around every call into rego-cpp (any thread)
ENGINE_LOCK = threading.RLock()

#: built-ins OPA has and regopy lacks (stay within what both engines support)
UNSUPPORTED_HINT = "regopy lacks http.send, net.* and json.match_schema"

_STRING_RE = re.compile(r'"(?:[^"\\\n]|\\.)*"|`[^`]*`')
_COMMENT_RE = re.compile(r"#.*$", re.MULTILINE)
_CALL_RE = re.compile(r"(?<![\w.])([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)\s*\(")
_HEAD_RE = re.compile(r"^([A-Za-z_]\w*)\s*\(", re.MULTILINE)
_IMPORT_RE = re.compile(r"^import\s+([\w.]+)(?:\s+as\s+(\w+))?", re.MULTILINE)
_KEYWORDS = {"if", "some", "every", "not", "in", "else", "with", "as", "default", "contains", "set"}


@dataclass(frozen=True)
class TestResult:
    """The outcome of one ``test_*`` rule."""

    file: str
    name: str  # data.<package>.<rule>
    passed: bool
    error: str = ""
    seconds: float = 0.0


class CompiledPolicy:
    """One policy set, parsed, checked and compiled into a regopy bundle."""

    def __init__(self, policy_set: PolicySet, decision_path: str, *, with_tests: bool = True) -> None:
        self.policy_set = policy_set
        self.version = policy_set.version
        self.decision_path = decision_path.strip("/")
        with ENGINE_LOCK:
            self._compile(with_tests)

    def __del__(self) -> None:
        # free the native interpreter and bundle under the engine lock, whichever thread drops them
        with ENGINE_LOCK:
            self.__dict__.pop("_bundle", None)
            self.__dict__.pop("_interpreter", None)

    def _compile(self, with_tests: bool) -> None:
        policy_set = self.policy_set
        self._interpreter = regopy.Interpreter()
        self._interpreter.log_level = regopy.LogLevel.NONE
        modules = [m for m in policy_set.modules if with_tests or not m.is_test]
        # regopy has no print(): each call is evaluated as true, as OPA's always succeeds
        modules = [dataclasses.replace(m, source=neutralize_print(m.source)) for m in modules]
        sources = {m.path: m.source for m in modules}
        for module in modules:
            try:
                self._interpreter.add_module(module.path, module.source)
            except regopy.RegoError as exc:
                raise PolicyLoadError(format_rego_error(str(exc), sources)) from None
        for module in modules:
            self._check_calls(module.path, module.source)
        try:
            rego_terms.add_data(self._interpreter, policy_set.data)
        except regopy.RegoError as exc:
            raise PolicyLoadError(f"data: {format_rego_error(str(exc), sources)}") from None
        self._check_decision_rules()
        self.tests = [(m.path, m.package, rule) for m in modules if m.is_test for rule in m.test_rules()]
        entrypoints = [self.entrypoint("decisions"), self.entrypoint("pod_settings")]
        entrypoints += [f"{package.replace('.', '/')}/{rule}" for _, package, rule in self.tests]
        try:
            self._bundle = self._interpreter.build(None, entrypoints)
        except regopy.RegoError as exc:
            raise PolicyLoadError(format_rego_error(str(exc), sources)) from None
        if not self._bundle.ok():
            raise PolicyLoadError("the policy set does not compile (regopy gave no detail)")

    def entrypoint(self, rule: str) -> str:
        return f"{self.decision_path}/{rule}"

    def _check_decision_rules(self) -> None:
        package = self.decision_path.replace("/", ".")
        modules = [m for m in self.policy_set.modules if m.package == package]
        text = "\n".join(m.source for m in modules)
        if not modules or not re.search(r"^decisions\b", text, re.MULTILINE):
            raise PolicyLoadError(
                f"no package {package} with a `decisions` rule: the sidecar queries "
                f"data.{package}.decisions (see docs/policy.md)"
            )

    def _check_calls(self, path: str, source: str) -> None:
        check_calls(self._interpreter, path, source)

    def query(self, rule: str, input_document: Any) -> Any | None:
        """Evaluate ``<decision_path>/<rule>``; None when the result is undefined."""
        return self._run(self.entrypoint(rule), input_document)

    def _run(self, entrypoint: str, input_document: Any) -> Any | None:
        with ENGINE_LOCK:
            text = self._output(entrypoint, input_document)
        if text == "undefined":
            return None
        try:
            document = json.loads(text)
        except json.JSONDecodeError:
            raise DecisionError(f"{entrypoint}: the engine returned an unreadable result: {loggable(text)}") from None
        expressions = document.get("expressions") if isinstance(document, dict) else None
        if not expressions:
            return None
        return expressions[0]

    def _output(self, entrypoint: str, input_document: Any) -> str:
        """The engine's output text for one query (``undefined``, or a JSON document)."""
        interpreter = self._interpreter
        try:
            rego_terms.set_input(interpreter, input_document)
        except (regopy.RegoError, TypeError, ValueError) as exc:
            raise DecisionError(f"input cannot be given to the engine: {exc}") from None
        impl = rego_shared.rego_bundle_query_entrypoint(interpreter._impl, self._bundle._impl, entrypoint)
        try:
            ok = rego_shared.rego_output_ok(impl)
            text = rego_shared.rego_output_string(impl) if ok else _error_tree(
                rego_shared.rego_output_node(impl)
            )
        except regopy.RegoError as exc:
            raise DecisionError(f"{entrypoint}: evaluation failed: {exc}") from None
        finally:
            rego_shared.rego_free_output(impl)
        if not ok or text.startswith("(error"):
            detail = "; ".join(error_messages(text)) if text.startswith("(error") else text
            raise DecisionError(f"{entrypoint}: evaluation failed: {detail or 'unknown error'}")
        return text

    def run_tests(self) -> list[TestResult]:
        """Run every ``test_*`` rule; a test passes when its value is ``true``."""
        results: list[TestResult] = []
        for path, package, rule in self.tests:
            start = time.perf_counter()
            name = f"data.{package}.{rule}"
            try:
                value = self._run(f"{package.replace('.', '/')}/{rule}", {})
            except DecisionError as exc:
                results.append(TestResult(path, name, False, str(exc), time.perf_counter() - start))
                continue
            results.append(TestResult(path, name, value is True, "", time.perf_counter() - start))
        return results


def _error_tree(node: int) -> str:
    """Render an error node tree as the ``(error (errormsg N:...))`` text form."""
    parts: list[str] = []

    def walk(impl: int) -> None:
        kind = rego_shared.rego_node_type(impl)
        if kind == regopy.NodeKind.ErrorMessage:
            message = rego_shared.rego_node_value(impl)
            parts.append(f"(errormsg {len(message)}:{message})")
        for index in range(rego_shared.rego_node_size(impl)):
            walk(rego_shared.rego_node_get(impl, index))

    walk(node)
    return "(error " + " ".join(parts) + ")" if parts else "(error)"


def check_calls(interpreter: Any, path: str, source: str) -> None:
    """Refuse calls to functions that neither regopy (``interpreter``) nor the policy set defines."""
    text = _COMMENT_RE.sub("", _STRING_RE.sub('""', source))
    aliases = {"data", "input"}
    for full, alias in _IMPORT_RE.findall(text):
        aliases.add(alias or full.rsplit(".", 1)[-1])
    local = set(_HEAD_RE.findall(text))
    for match in _CALL_RE.finditer(text):
        name = match.group(1)
        first = name.split(".", 1)[0]
        if name in _KEYWORDS or first in aliases or ("." not in name and name in local):
            continue
        if not interpreter.is_builtin(name):
            line = text.count("\n", 0, match.start()) + 1
            raise PolicyLoadError(
                f"line {line}: {name}() is not a built-in the embedded engine supports "
                f"({UNSUPPORTED_HINT}); policies must stay within the built-ins "
                "both engines support",
                path,
            )
