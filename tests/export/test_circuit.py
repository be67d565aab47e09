"""CircuitBreaker (sidecar.export.circuit) as its user, the Sender, relies on it: closed lets every
attempt through, ``threshold`` consecutive failures open it, nothing goes through while open,
then one probe at a time (half-open) whose answer closes it or reopens it for twice as long.
Time is a clock the test steps; the state is also checked where an operator sees it (metrics)."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from sidecar.export.circuit import ENDPOINT_FAILURES, CircuitBreaker, State, upstream_failed
from tests.clock import ManualClock as Clock


def breaker(clock: Clock, registry: CollectorRegistry | None = None, **kwargs: float) -> CircuitBreaker:
    settings: dict[str, float] = {"threshold": 3, "open_for": 1.0, "max_open_for": 4.0, **kwargs}
    return CircuitBreaker(
        threshold=int(settings["threshold"]), open_for=settings["open_for"], max_open_for=settings["max_open_for"],
        registry=registry, clock=clock,
    )


async def admitted(circuit: CircuitBreaker, within: float = 0.05) -> bool:
    """True when ``acquire`` returns (an attempt may be made) within ``within`` real seconds."""
    try:
        await asyncio.wait_for(circuit.acquire(), within)
    except TimeoutError:
        return False
    return True


async def test_closed_lets_every_attempt_through_and_opens_after_threshold_consecutive_failures() -> None:
    clock = Clock()
    circuit = breaker(clock)
    for _ in range(2):
        assert await admitted(circuit)
        circuit.failure("connection refused")
    assert circuit.state is State.CLOSED and circuit.allows_traffic
    assert await admitted(circuit)
    circuit.failure("connection refused (exporter.endpoint)")
    assert circuit.state is State.OPEN and not circuit.allows_traffic
    assert circuit.last_failure == "connection refused (exporter.endpoint)"
    assert not await admitted(circuit)  # nothing goes through while open


async def test_failures_must_be_consecutive() -> None:
    circuit = breaker(Clock())
    for _ in range(5):
        circuit.failure()
        circuit.failure()
        circuit.success()  # the upstream answered: the count starts again
    assert circuit.state is State.CLOSED


async def test_after_open_for_one_probe_goes_through_and_its_success_closes_the_circuit() -> None:
    clock = Clock()
    circuit = breaker(clock)
    for _ in range(3):
        circuit.failure()
    clock.advance(0.99)
    assert not await admitted(circuit)
    clock.advance(0.01)
    assert await admitted(circuit)  # the probe
    assert circuit.state is State.HALF_OPEN and circuit.allows_traffic
    waiting = asyncio.create_task(circuit.acquire())  # another worker's attempt waits for the probe
    await asyncio.sleep(0.05)
    assert not waiting.done()
    circuit.success()
    await asyncio.wait_for(waiting, 1.0)
    assert circuit.state is State.CLOSED
    assert await admitted(circuit) and await admitted(circuit)  # closed: no limit on attempts


async def test_a_failed_probe_reopens_for_twice_as_long_up_to_the_maximum_and_success_resets_it() -> None:
    clock = Clock()
    circuit = breaker(clock, open_for=1.0, max_open_for=4.0)
    for _ in range(3):
        circuit.failure()
    for open_for in (1.0, 2.0, 4.0, 4.0):  # doubling, capped by max_open_for
        clock.advance(open_for - 0.01)
        assert not await admitted(circuit), open_for
        clock.advance(0.01)
        assert await admitted(circuit), open_for
        assert circuit.state is State.HALF_OPEN
        circuit.failure("still down")  # one failed probe is enough to reopen
        assert circuit.state is State.OPEN
    clock.advance(4.0)
    assert await admitted(circuit)
    circuit.success()
    # closed again with the base open time: the next opening lasts open_for, not the last 4 s
    for _ in range(3):
        circuit.failure()
    clock.advance(1.0)
    assert await admitted(circuit)


async def test_a_probe_released_without_an_answer_lets_the_next_attempt_probe() -> None:
    clock = Clock()
    circuit = breaker(clock)
    for _ in range(3):
        circuit.failure()
    clock.advance(1.0)
    assert await admitted(circuit)
    waiting = asyncio.create_task(circuit.acquire())
    await asyncio.sleep(0.05)
    assert not waiting.done()
    circuit.release()  # e.g. the probing worker was cancelled
    await asyncio.wait_for(waiting, 1.0)
    assert circuit.state is State.HALF_OPEN
    assert not await admitted(circuit)  # still one probe at a time


async def test_a_waiting_attempt_is_admitted_once_the_open_time_has_passed() -> None:
    """With the real clock: a worker blocked on an open circuit goes on by itself."""
    circuit = CircuitBreaker(threshold=1, open_for=0.2, max_open_for=1.0)
    circuit.failure()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(circuit.acquire(), 2.0)
    assert loop.time() - started >= 0.15
    assert circuit.state is State.HALF_OPEN


async def test_the_state_and_every_transition_are_in_the_metrics() -> None:
    clock = Clock()
    registry = CollectorRegistry()
    circuit = breaker(clock, registry)

    def state() -> float | None:
        return registry.get_sample_value("otlp_sidecar_exporter_circuit_state", {"signal": "traces"})

    def transitions(to: str) -> float | None:
        return registry.get_sample_value(
            "otlp_sidecar_exporter_circuit_transitions_total", {"signal": "traces", "state": to}
        )

    assert (state(), transitions("open"), transitions("half_open"), transitions("closed")) == (0, 0, 0, 0)
    for _ in range(3):
        circuit.failure()
    assert (state(), transitions("open")) == (2, 1)
    clock.advance(1.0)
    await circuit.acquire()
    assert (state(), transitions("half_open")) == (1, 1)
    circuit.success()
    assert (state(), transitions("closed")) == (0, 1)


@pytest.mark.parametrize(
    ("reason", "retryable", "counts"),
    [
        ("http_503", True, True),
        ("grpc_unavailable", True, True),
        ("http_404", False, True),  # a wrong path: every batch would get it
        ("grpc_unauthenticated", False, True),
        ("http_508", False, True),  # the loop guard: the upstream is this sidecar
        ("http_400", False, False),  # about this batch's data: the upstream works
        ("http_413", False, False),
        ("grpc_invalid_argument", False, False),
    ],
)
def test_what_counts_as_a_failure_of_the_upstream(reason: str, retryable: bool, counts: bool) -> None:
    assert upstream_failed(reason, retryable) is counts
    assert (reason in ENDPOINT_FAILURES) is (counts and not retryable)
