"""Moved: the receive budget is :class:`sidecar.overload.budget.MemoryBudget` now.

``ReceiveBudget(limit)`` stays for code that reserves without accounts (``reserve``/``release``).
"""

from __future__ import annotations

from sidecar.overload.budget import Account, MemoryBudget

ReceiveBudget = MemoryBudget

__all__ = ["Account", "MemoryBudget", "ReceiveBudget"]
