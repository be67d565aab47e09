"""asyncio's per-write warnings are rate-limited: a client sets their pace, not the operator."""

from __future__ import annotations

import logging

import pytest

from sidecar.logsetup import RateLimited, limit_client_paced_warnings


def test_a_client_paced_warning_passes_once_per_period_with_the_count_left_out() -> None:
    clock = [100.0]
    limiter = RateLimited(every=30.0)
    limiter_time = pytest.MonkeyPatch()
    limiter_time.setattr("sidecar.logsetup.time.monotonic", lambda: clock[0])
    try:
        def record(message: str) -> logging.LogRecord:
            return logging.LogRecord("asyncio", logging.WARNING, __file__, 1, message, None, None)

        passed = [limiter.filter(record("SSL connection is closed")) for _ in range(1000)]
        assert passed.count(True) == 1
        other = record("something else asyncio says")
        assert limiter.filter(other) and other.getMessage() == "something else asyncio says"
        clock[0] += 31.0
        later = record("SSL connection is closed")
        assert limiter.filter(later)
        assert later.getMessage() == "SSL connection is closed (999 more like it in the last 30 s)"
    finally:
        limiter_time.undo()


def test_installed_once_on_the_asyncio_logger(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("asyncio")
    before = list(logger.filters)
    logger.filters[:] = [f for f in before if not isinstance(f, RateLimited)]  # a fresh one
    try:
        limit_client_paced_warnings()
        limit_client_paced_warnings()
        assert sum(isinstance(f, RateLimited) for f in logger.filters) == 1
        with caplog.at_level(logging.WARNING, logger="asyncio"):
            for _ in range(500):
                logger.warning("SSL connection is closed")
        assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == ["SSL connection is closed"]
    finally:
        logger.filters[:] = before
