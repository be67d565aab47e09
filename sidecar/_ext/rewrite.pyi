"""Types of the compiled rewriter (ext/rewrite.pyx); the twin: sidecar/rewrite/_py.py."""

from collections.abc import Sequence
from typing import Final

from sidecar._ext.cards import find_pans as find_pans
from sidecar.rewrite._common import MAX_GROWTH, RequestData
from sidecar.rewrite._common import MalformedRequest as MalformedRequest
from sidecar.rewrite._common import ResourceInfo as ResourceInfo
from sidecar.rewrite._common import RewriteResult as RewriteResult
from sidecar.rewrite._common import RewriteTooLarge as RewriteTooLarge
from sidecar.rewrite.plan import Plan
from sidecar.signals import Signal

__all__ = ["IMPLEMENTATION", "MalformedRequest", "ResourceInfo", "RewriteResult", "RewriteTooLarge",
           "count_items", "count_resources", "find_pans", "rewrite", "split_resources",
           "unknown_field", "without_unknown_fields"]

IMPLEMENTATION: Final[str]

def count_items(signal: Signal, data: RequestData) -> int: ...
def count_resources(signal: Signal, data: RequestData, stop_at: int = 0) -> int: ...
def split_resources(signal: Signal, data: RequestData, validate: bool = True,
                    count: bool = True) -> list[ResourceInfo]: ...
def rewrite(signal: Signal, data: RequestData, plans: Sequence[Plan],
            max_growth: int = MAX_GROWTH) -> RewriteResult: ...
def unknown_field(signal: Signal, data: RequestData) -> str | None: ...
def without_unknown_fields(signal: Signal, data: RequestData) -> tuple[bytes, int]: ...
