"""The rewriter: apply per-resource plans to OTLP export requests on their protobuf bytes.

Imports the Cython module ``sidecar._ext.rewrite`` (which imports the compiled modules it
cimports: ``wire``, ``cards``, ``sampling``, ``stamps``) unless ``OTLP_SIDECAR_NO_EXTENSIONS=1``
is set or one of them is not built, else the pure-Python twin ``sidecar.rewrite._py`` (and its
parts ``_wire``, ``_cards``, ``_sampling``, ``_stamps``). ``IMPLEMENTATION`` says which one
("cython" or "python"). See docs/rewriter.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sidecar._ext import DISABLED
from sidecar.rewrite._common import MAX_GROWTH, MalformedRequest, ResourceInfo, RewriteResult, RewriteTooLarge

__all__ = ["IMPLEMENTATION", "MAX_GROWTH", "MalformedRequest", "ResourceInfo", "RewriteResult", "RewriteTooLarge",
           "count_items", "count_resources", "rewrite", "split_resources", "unknown_field", "without_unknown_fields"]

NO_EXTENSIONS = DISABLED

if TYPE_CHECKING or NO_EXTENSIONS:
    from sidecar.rewrite._py import (
        IMPLEMENTATION,
        count_items,
        count_resources,
        rewrite,
        split_resources,
        unknown_field,
        without_unknown_fields,
    )
else:
    try:
        from sidecar._ext.rewrite import (
            IMPLEMENTATION,
            count_items,
            count_resources,
            rewrite,
            split_resources,
            unknown_field,
            without_unknown_fields,
        )
    except ImportError:  # pragma: no cover - not built
        from sidecar.rewrite._py import (
            IMPLEMENTATION,
            count_items,
            count_resources,
            rewrite,
            split_resources,
            unknown_field,
            without_unknown_fields,
        )
