"""The one owner of receive resources (as Envoy's overload manager is one).

- :mod:`sidecar.overload.config`: the ``limits`` config section, every receive limit in one place;
- :mod:`sidecar.overload.budget`: one memory budget that every byte a client makes the sidecar hold
  is reserved from (wire bytes as they arrive, decompressed and decoded bytes, partial frames),
  until ``queue.put``, with a per-connection share;
- :mod:`sidecar.overload.reasons`: one vocabulary of refusals and protective actions, each with its
  OTLP status (HTTP code, gRPC code, retryable) and metric label;
- :mod:`sidecar.overload.metrics`: one metric per protective action, connections per listener,
  the budget in use.
"""

from sidecar.overload.budget import Account, MemoryBudget
from sidecar.overload.config import LimitsConfig
from sidecar.overload.reasons import Action

__all__ = ["Account", "Action", "LimitsConfig", "MemoryBudget"]
