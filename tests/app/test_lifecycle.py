"""The sidecar's life as a process: graceful shutdown of a real `otlp-sidecar run` flushes what was
accepted, and what is loaded at start is kept out of the cyclic garbage collector."""

from __future__ import annotations

import signal

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from tests import sdk
from tests.conftest import sidecar_env
from tests.processes import SidecarProcess
from tests.upstream import Answer

BODY = encode_spans(sdk.make_spans(25)).SerializeToString()


async def post_traces(port: int) -> int:
    return await sdk.post_protobuf(port, BODY)


async def test_sigterm_flushes_accepted_items_and_exits_zero(upstream) -> None:
    """A real `otlp-sidecar run` process: what was accepted before SIGTERM reaches the upstream."""
    upstream.default = Answer(delay=0.3)  # a slow upstream, so data is still queued at SIGTERM
    sidecar = SidecarProcess(
        sidecar_env(upstream, "grpc", SIDECAR_EXPORTER_BATCH_TIMEOUT="5s", SIDECAR_EXPORTER_BATCH_SIZE="100000")
    )
    ports = await sidecar.start()
    try:
        for _ in range(4):
            assert await post_traces(ports["http"]) == 200
        assert upstream.spans() == []  # the 5 s batch timeout has not passed
    finally:
        code = await sidecar.stop(signal.SIGTERM)
    assert code == 0, sidecar.stderr
    assert "Traceback" not in sidecar.stderr
    assert len(upstream.spans()) == 100


async def test_startup_objects_are_kept_out_of_the_cyclic_collector(start_sidecar) -> None:
    """A full GC pass over everything loaded at start stalls the event loop for tens of ms."""
    import gc

    gc.unfreeze()
    await start_sidecar(sidecar_env(None))
    assert gc.get_freeze_count() > 10_000
