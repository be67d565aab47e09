"""The on-disk queue's format: durable appends, replay, acknowledgements, corruption handling."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from sidecar.export.disklog import DiskFull, DiskLog
from sidecar.signals import Signal


def open_log(path: Path, **kwargs: int) -> tuple[DiskLog, list, CollectorRegistry]:
    registry = CollectorRegistry()
    log = DiskLog(str(path), max_bytes=kwargs.pop("max_bytes", 1 << 20), registry=registry, **kwargs)
    return log, log.open(), registry


async def test_replay_returns_unacknowledged_records_in_order(tmp_path: Path) -> None:
    log, replay, _ = open_log(tmp_path)
    assert replay == []
    records = [await log.append(Signal.TRACES, i, f"request-{i}".encode()) for i in range(5)]
    log.ack(records[1])
    log.ack(records[3])
    log.close()
    log, replay, registry = open_log(tmp_path)
    assert [(r.signal, r.items) for r in replay] == [(Signal.TRACES, 0), (Signal.TRACES, 2), (Signal.TRACES, 4)]
    assert [log.read(r) for r in replay] == [b"request-0", b"request-2", b"request-4"]
    assert registry.get_sample_value("otlp_sidecar_disk_queue_replayed_records_total") == 3
    log.close()


async def test_segments_roll_and_are_deleted_when_all_acknowledged(tmp_path: Path) -> None:
    log, _, _ = open_log(tmp_path, segment_bytes=64 * 1024)
    records = [await log.append(Signal.LOGS, 1, b"x" * 20_000) for _ in range(10)]
    assert len(list(tmp_path.glob("segment-*.log"))) >= 3
    for record in records:
        log.ack(record)
    # only the active segment is left
    assert len(list(tmp_path.glob("segment-*.log"))) == 1
    assert log.bytes <= 64 * 1024
    log.close()
    log, replay, _ = open_log(tmp_path)
    assert replay == []
    log.close()


async def test_full_disk_queue_refuses(tmp_path: Path) -> None:
    log, _, _ = open_log(tmp_path, max_bytes=1 << 20)
    await log.append(Signal.METRICS, 1, b"y" * 900_000)
    with pytest.raises(DiskFull):
        await log.append(Signal.METRICS, 1, b"y" * 200_000)
    log.close()


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "garbage_tail"])
async def test_corruption_is_counted_and_skipped_never_a_crash(tmp_path: Path, damage: str) -> None:
    log, _, _ = open_log(tmp_path)
    for i in range(4):
        await log.append(Signal.TRACES, 1, f"payload-{i}".encode() * 10)
    log.close()
    segment = next(tmp_path.glob("segment-*.log"))
    data = bytearray(segment.read_bytes())
    record_size = len(data) // 4
    if damage == "flip_byte":
        data[2 * record_size + 30] ^= 0xFF  # inside the third payload
    elif damage == "truncate":
        del data[3 * record_size + 10 :]  # a crash in the middle of the fourth write
    else:
        data += b"\x00garbage"
    segment.write_bytes(bytes(data))
    log, replay, registry = open_log(tmp_path)
    expected = {"flip_byte": 2, "truncate": 3, "garbage_tail": 4}[damage]
    assert [log.read(r) for r in replay] == [f"payload-{i}".encode() * 10 for i in range(expected)]
    assert registry.get_sample_value("otlp_sidecar_disk_queue_corrupt_records_total") == 1
    log.close()
