"""The load generators send different requests at once.

The target merges what arrives together into one export batch; with every connection sending the
same body at the same moment, a batch held the same request several times and zstd compressed the
copies to almost nothing (a ratio of 21 instead of 6.5 on the metrics batches), which made the
unsampled HTTP rows look 30 % cheaper than they are. Each connection now starts at its own place.
"""

from __future__ import annotations

import asyncio
import itertools

from bench import load
from bench.loadgen import GrpcConnection


def test_every_connection_of_every_generator_starts_at_its_own_body() -> None:
    for generators, connections, bodies in ((2, 8, 64), (2, 1, 64), (1, 64, 64), (2, 4, 8)):
        firsts = [start for index in range(generators)
                  for start in load.starts((index, generators), connections, bodies)]
        assert len(set(firsts)) == len(firsts) == generators * connections
        assert all(0 <= start < bodies for start in firsts)
        # spread evenly: the nearest two are as far apart as the bodies allow
        ordered = sorted(firsts)
        assert min(b - a for a, b in itertools.pairwise(ordered)) == bodies // (generators * connections)


async def test_http_connections_send_their_own_bodies_first_on_loopback() -> None:
    """A real HTTP/1.1 server on loopback records what each connection sent first."""
    bodies = [bytes([n]) * 64 for n in range(16)]
    firsts: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = True
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                body = await reader.readexactly(length)
                if first:
                    firsts.append(body[0])
                    first = False
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        result = await load._generate("http", port, bodies, 1.0, 4, None, "traces", (1, 2))
    finally:
        server.close()
        await server.wait_closed()
    assert result["ok"] > 4 and result["failed"] == 0
    assert sorted(firsts) == load.starts((1, 2), 4, len(bodies)) == [8, 10, 12, 14]


def test_a_grpc_connection_sends_its_own_message_first() -> None:
    """The gRPC generator's first call carries ``messages[start]``: its DATA frame as written to
    the transport (a capturing transport here, the call's answer is not needed)."""
    messages = [bytes([n]) * 32 for n in range(8)]
    written: list[bytes] = []

    class Capture(asyncio.Transport):
        def write(self, data: bytes | bytearray | memoryview) -> None:
            written.append(bytes(data))

    async def first_call() -> None:
        connection = GrpcConnection("127.0.0.1", 1, "/p", messages, start=5)
        connection.connection_made(Capture())
        call = asyncio.ensure_future(connection.call())
        await asyncio.sleep(0)
        call.cancel()

    asyncio.run(first_call())
    sent = b"".join(written)
    assert bytes([5]) * 32 in sent
    assert all(bytes([n]) * 32 not in sent for n in range(8) if n != 5)
