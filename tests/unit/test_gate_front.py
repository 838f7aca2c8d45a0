"""The UI gate's TCP front (bootstrap/servers/front.py): one peer address holds only its share of
the connections, bytes are relayed untouched both ways, and a reader that stops reading stops the
relay instead of filling its buffers."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
from pathlib import Path

import pytest

from bootstrap.servers.front import READ_CHUNK, WRITE_BUFFER, Front, PeerShares


class Upstream:
    """A Unix-socket server standing in for gRPC: it echoes, or (stalled) accepts and never reads."""

    def __init__(self, stalled: bool = False):
        self.stalled, self.connections = stalled, 0
        self.path = Path(tempfile.mkdtemp()) / "up.sock"

    async def start(self):
        self.server = await asyncio.start_unix_server(self.serve, str(self.path))

    async def serve(self, reader, writer):
        self.connections += 1
        try:
            if self.stalled:
                await asyncio.sleep(3600)
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.write_eof()  # half-close answered: the caller still reads what came before
        finally:
            self.connections -= 1
            writer.close()


async def _front(upstream: Upstream, total: int = 8, per_peer: int = 3) -> tuple[Front, int]:
    await upstream.start()
    front = Front(upstream.path, PeerShares(total, per_peer))
    return front, await front.start("127.0.0.1", 0)


async def _connect(port: int, source: str = "127.0.0.1"):
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def _relayed(reader, writer, payload: bytes = b"ping") -> bool:
    """Whether the connection reaches the upstream: a refused one is closed before any byte."""
    writer.write(payload)
    try:
        return await asyncio.wait_for(reader.readexactly(len(payload)), 5) == payload
    except (asyncio.IncompleteReadError, ConnectionError):
        return False


def test_bytes_travel_untouched_both_ways_and_a_half_close_is_passed_on():
    async def check():
        front, port = await _front(Upstream())
        reader, writer = await _connect(port)
        payload = os.urandom(4 * 1024 * 1024 + 7)
        writer.write(payload)
        writer.write_eof()
        echoed = await asyncio.wait_for(reader.read(-1), 30)  # to EOF: the upstream saw ours
        assert echoed == payload
        writer.close()
        front.stop()

    asyncio.run(check())


def test_one_address_holds_only_its_share_and_others_still_connect():
    async def check():
        upstream = Upstream()
        front, port = await _front(upstream, total=8, per_peer=3)
        flood = [await _connect(port, "127.0.0.2") for _ in range(10)]
        relayed = [await _relayed(r, w) for r, w in flood]
        assert relayed.count(True) == 3, relayed
        assert front.refused == 7
        ui = await _connect(port, "127.0.0.1")
        assert await _relayed(*ui)
        for _, writer in flood:  # once it lets go, the address has its share again
            writer.close()
        await asyncio.sleep(0.2)
        assert front.shares.open["127.0.0.2"] == 0 and upstream.connections == 1
        again = await _connect(port, "127.0.0.2")
        assert await _relayed(*again)
        front.stop()

    asyncio.run(check())


def test_all_addresses_together_hold_at_most_the_total():
    async def check():
        front, port = await _front(Upstream(), total=4, per_peer=2)
        held = [await _connect(port, f"127.0.0.{n}") for n in (2, 2, 3, 3, 4)]
        relayed = [await _relayed(r, w) for r, w in held]
        assert relayed == [True, True, True, True, False]
        front.stop()

    asyncio.run(check())


def test_a_caller_that_never_reads_stops_the_relay_instead_of_filling_its_buffers():
    async def check():
        front, port = await _front(Upstream(stalled=True))
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
        sock.setblocking(False)
        sent, chunk = 0, b"x" * 65536
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while loop.time() < deadline:  # until the kernel's buffers on the way are full too
            try:
                sent += sock.send(chunk)
            except BlockingIOError:
                await asyncio.sleep(0.05)
        assert 0 < front.buffered() <= WRITE_BUFFER + READ_CHUNK, front.buffered()
        assert sent < 64 * 1024 * 1024  # the caller was stopped, not let to write without end
        sock.close()
        front.stop()

    asyncio.run(check())


class SlowFront(Front):
    """A front whose upstream connection takes a while, on a runtime that reads before it is there
    (Debian bookworm's Python 3.11.2 starts reading after connection_made although it paused)."""

    def relay(self, caller) -> None:
        caller.transport.resume_reading()

        async def later():
            await asyncio.sleep(0.3)
            super(SlowFront, self).relay(caller)

        asyncio.ensure_future(later())


def test_bytes_sent_before_the_upstream_is_connected_arrive_once_and_in_order():
    async def check():
        upstream = Upstream()
        await upstream.start()
        front = SlowFront(upstream.path, PeerShares(8, 3))
        port = await front.start("127.0.0.1", 0)
        reader, writer = await _connect(port)
        payload = os.urandom(200_000)  # more than one read: the rest waits in the kernel
        writer.write(payload)
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(-1), 30) == payload
        writer.close()
        front.stop()

    asyncio.run(check())


@pytest.mark.parametrize("per_peer", [0])
def test_a_share_of_nothing_refuses_every_connection(per_peer):
    async def check():
        front, port = await _front(Upstream(), total=4, per_peer=per_peer)
        assert not await _relayed(*await _connect(port))
        front.stop()

    asyncio.run(check())
