"""bench.grpclib_server, the grpclib baseline the benchmarks compare against: its transport."""

from __future__ import annotations

import asyncio

from bench.grpclib_server import CoalescingTransport


async def test_coalescing_transport_sends_one_turns_writes_together_in_order() -> None:
    """grpclib writes a unary answer in three parts; the server sends them with one write."""
    received = bytearray()
    got_all = asyncio.Event()

    class Sink(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            received.extend(data)
            if received.endswith(b"end"):
                got_all.set()

    loop = asyncio.get_running_loop()
    server = await loop.create_server(Sink, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sent: list[bytes] = []

    async def spied_connection() -> asyncio.Transport:
        """A real loopback transport whose writes are recorded in ``sent``."""
        transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        real_write = transport.write
        transport.write = lambda data: (sent.append(bytes(data)), real_write(data))  # type: ignore[method-assign]
        return transport

    transport = await spied_connection()
    transport2: asyncio.Transport | None = None
    try:
        coalescing = CoalescingTransport(transport)
        for part in (b"headers|", b"", b"message|", b"trailers|"):
            coalescing.write(part)
        assert sent == []  # nothing yet: sent at the end of this loop turn
        await asyncio.sleep(0)
        assert sent == [b"headers|message|trailers|"]
        coalescing.write(b"last ")
        coalescing.write(b"end")
        coalescing.close()  # closing sends what is pending first
        await asyncio.wait_for(got_all.wait(), 5)
        assert bytes(received) == b"headers|message|trailers|last end"
        assert coalescing.is_closing()
        coalescing.write(b"after close")  # dropped quietly, as a closed transport would
        await asyncio.sleep(0)
        # a large write is sent at once, with what was held before it (the wrapped transport's
        # flow control must see it)
        sent.clear()
        transport2 = await spied_connection()
        big = CoalescingTransport(transport2)
        big.write(b"head|")
        big.write(b"x" * CoalescingTransport.MAX_HELD)
        assert sent == [b"head|" + b"x" * CoalescingTransport.MAX_HELD]
        assert big.get_write_buffer_size() == transport2.get_write_buffer_size()
        big.close()
    finally:
        transport.close()
        if transport2 is not None:
            transport2.close()
        server.close()
        await server.wait_closed()
