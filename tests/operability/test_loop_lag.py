"""The event loop's lag, as an operator sees it: ``otlp_sidecar_event_loop_lag_seconds`` and the log.

A pod throttled by its CPU limit is a process the kernel does not run for a while: here a real
``otlp-sidecar run`` is stopped with SIGSTOP for 1.5 s and continued, which is what the CFS
throttle does to it (for shorter turns). Its metrics must show the lag, its log must say it once,
and it must go on serving.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from sidecar.overload.loop_lag import LoopLagProbe
from tests import sdk
from tests.conftest import sidecar_env
from tests.operator import scrape, value
from tests.processes import SidecarProcess
from tests.upstream import Upstream

LAG = "otlp_sidecar_event_loop_lag_seconds"


async def test_a_stopped_process_shows_its_lag_logs_it_once_and_goes_on_serving(upstream: Upstream) -> None:
    process = SidecarProcess(sidecar_env(upstream, "grpc"))
    ports = await process.start()
    metrics = f"http://127.0.0.1:{ports['admin']}/metrics"
    try:
        start = await scrape(metrics)
        await asyncio.sleep(1.0)
        idle = await scrape(metrics)
        checks = (value(idle, f"{LAG}_count") or 0) - (value(start, f"{LAG}_count") or 0)
        on_time = (value(idle, f"{LAG}_bucket", le="0.1") or 0) - (value(start, f"{LAG}_bucket", le="0.1") or 0)
        assert checks >= 5, "the loop is checked ten times a second"
        assert on_time >= 0.8 * checks, "an idle sidecar's loop is not 100 ms late"

        assert process.proc is not None
        process.proc.send_signal(signal.SIGSTOP)  # the kernel stops running it, as a CPU limit does
        await asyncio.sleep(1.5)
        process.proc.send_signal(signal.SIGCONT)

        after = await scrape(metrics)
        late = (value(after, f"{LAG}_count") or 0) - (value(after, f"{LAG}_bucket", le="1.0") or 0)
        assert late >= 1, "a check ran over a second late"
        assert (value(after, f"{LAG}_sum") or 0) >= 1.3
        body = encode_spans(sdk.make_spans(3)).SerializeToString()
        assert await sdk.post_protobuf(ports["http"], body) == 200  # it serves again at once
        await upstream.wait_for(lambda: len(upstream.spans()) == 3)
    finally:
        assert await process.stop() == 0
    stalls = [line for line in process.stderr_lines if "the event loop ran" in line]
    assert len(stalls) == 1, process.stderr
    assert " s late" in stalls[0] and "CPU limit" in stalls[0]


async def test_stalls_are_logged_at_most_once_per_period_with_a_count(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.get_running_loop()
    observed: list[tuple[float, float]] = []  # (when, lag)
    probe = LoopLagProbe(lambda lag: observed.append((loop.time(), lag)), interval=0.01, stall=0.15, log_every=1.0)
    caplog.set_level(logging.WARNING, logger="sidecar.overload.loop_lag")
    probe.start()
    try:
        for _ in range(3):  # three stalls within the period: the first is logged
            await asyncio.sleep(0.03)
            time.sleep(0.2)  # work holding the loop
        await asyncio.sleep(1.03)
        time.sleep(0.3)  # a period later: logged, with the two not logged before
        await asyncio.sleep(0.03)
    finally:
        probe.stop()
    # a slow machine may add stalls of its own: the lines are checked against what was measured,
    # by the rule (a stall is logged when none was in the last period, with the longest and the
    # count of those since the last line)
    expected, unlogged, longest, logged_at = [], 0, 0.0, None
    for when, lag in observed:
        if lag < 0.15:
            continue
        unlogged, longest = unlogged + 1, max(longest, lag)
        if logged_at is None or when - logged_at >= 1.0:
            expected.append(f"the event loop ran {longest:.2f} s late"
                            + (f" at worst, {unlogged} times since the last such line" if unlogged > 1 else ""))
            unlogged, longest, logged_at = 0, 0.0, when
    lines = [record.getMessage().partition(":")[0] for record in caplog.records]
    assert lines == expected
    assert sum(lag >= 0.15 for _, lag in observed) >= 4 and max(lag for _, lag in observed) >= 0.25
    assert len(lines) >= 2 and any("at worst," in line for line in lines)
    assert len(observed) > 40  # measured between the stalls too
    count = len(observed)
    await asyncio.sleep(0.05)
    assert len(observed) == count, "a stopped probe measures nothing"
