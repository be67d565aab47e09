"""One exporter per signal where a signal has its own upstream settings (OTEL_EXPORTER_OTLP_<SIGNAL>_*)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from sidecar.export.compress import Payload
from sidecar.export.negotiate import DowngradeListener
from sidecar.export.result import Exported
from sidecar.export.sender import Exporter
from sidecar.signals import Signal


class BySignalExporter:
    """Sends each signal through its own exporter; starts and stops each distinct one once."""

    name = "by_signal"

    def __init__(self, exporters: Mapping[Signal, Exporter]) -> None:
        self._exporters = dict(exporters)
        self._distinct = list({id(e): e for e in self._exporters.values()}.values())
        self.name = "+".join(sorted({e.name for e in self._distinct}))

    async def start(self) -> None:
        for exporter in self._distinct:
            await exporter.start()

    async def stop(self) -> None:
        for exporter in self._distinct:
            await exporter.stop()

    def watch_downgrades(self, listener: DowngradeListener) -> None:
        self._watch("watch_downgrades", listener)

    def watch_dead_connections(self, listener: Callable[[], None]) -> None:
        self._watch("watch_dead_connections", listener)

    def _watch(self, method: str, listener: Callable[..., None]) -> None:
        """Hand ``listener`` to each exporter that reports these events (``method``)."""
        for exporter in self._distinct:
            watch = getattr(exporter, method, None)
            if watch is not None:
                watch(listener)

    async def export(self, signal: Signal, data: Payload) -> Exported:
        return await self._exporters[signal].export(signal, data)
