"""A TCP front for a gRPC server: it takes each connection before gRPC does, so that one peer
address can hold only its share of the connections.

gRPC's own listener knows one limit, all connections together (`grpc.max_allowed_incoming_connections`):
one certificate holder opening as many as it can would leave none for the Web UI's reconnect.
The front accepts on the public address, refuses a peer beyond its share (closed before any TLS
byte), and relays the bytes, untouched, to the gRPC server on a Unix socket of its own: TLS and
HTTP/2 stay end to end between the caller and gRPC. Relaying is bounded: a side that does not
read pauses the other (asyncio's flow control, WRITE_BUFFER each way), so a connection holds at
most RELAY_BYTES here beside the kernel's socket buffers (SOCKET_BUFFER on the front's Unix side).
"""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .events import log_event

WRITE_BUFFER = 32 * 1024  # written, not yet sent, before the other side stops reading
READ_CHUNK = 16 * 1024  # one read at most: asyncio's own reads take up to 256 KiB at once
SOCKET_BUFFER = 32 * 1024
# What a relayed connection holds here at worst: each direction its write buffer and one read.
RELAY_BYTES = 2 * (WRITE_BUFFER + READ_CHUNK)


@dataclass
class PeerShares:
    """Connections in all and per peer address."""

    total: int
    per_peer: int
    open: Counter = field(default_factory=Counter)

    def take(self, peer: str) -> bool:
        if sum(self.open.values()) >= self.total or self.open[peer] >= self.per_peer:
            return False
        self.open[peer] += 1
        return True

    def give_back(self, peer: str) -> None:
        self.open[peer] -= 1
        if self.open[peer] <= 0:
            del self.open[peer]


class _Side(asyncio.BufferedProtocol):
    """One end of a relayed connection: what it receives goes to `other`, and it stops reading
    while `other` cannot take more."""

    transport: asyncio.Transport | None = None
    other: "_Side | None" = None
    ended = False  # the peer of this side sent EOF
    early: list[bytes]  # what came before the other side was there (one read at most)

    def connection_made(self, transport) -> None:
        self.transport, self.early = transport, []
        self.buffer = memoryview(bytearray(READ_CHUNK))
        transport.set_write_buffer_limits(high=WRITE_BUFFER)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        data = bytes(self.buffer[:nbytes])
        if self.other is None:  # not joined yet: keep this one read and read no more until then
            self.early.append(data)
            self.transport.pause_reading()
            return
        self.other.transport.write(data)

    def eof_received(self) -> bool:
        self.ended = True
        if self.other is None or self.other.ended or not self.other.transport.can_write_eof():
            return False  # both directions ended (or cannot half-close): close, and the other with it
        self.other.transport.write_eof()
        return True  # half-closed: the other direction may still be answering

    def connection_lost(self, exc) -> None:
        if self.other is not None:
            self.other.transport.close()  # sends what it holds, then closes

    def pause_writing(self) -> None:
        if self.other is not None:
            self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.other is not None:
            self.other.transport.resume_reading()


class _Caller(_Side):
    """The accepted end: admitted within its peer's share, then joined to a new upstream connection.
    It reads nothing until the upstream end is there."""

    def __init__(self, front: "Front"):
        self.front, self.peer = front, None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        peer = (transport.get_extra_info("peername") or ("?",))[0]
        if not self.front.shares.take(peer):
            self.front.refuse(peer)
            transport.abort()
            return
        self.peer = peer
        # Some Python 3.11 releases (Debian bookworm's 3.11.2) start reading after connection_made
        # even when it paused reading: buffer_updated keeps that read until the upstream is there.
        transport.pause_reading()
        self.front.relay(self)

    def connection_lost(self, exc) -> None:
        super().connection_lost(exc)
        if self.peer is not None:
            self.front.shares.give_back(self.peer)
            self.front.callers.discard(self)
            self.peer = None


class Front:
    def __init__(self, upstream: Path, shares: PeerShares):
        self.upstream, self.shares = upstream, shares
        self.refused = 0
        self._server: asyncio.base_events.Server | None = None
        self._joining: set[asyncio.Task] = set()
        self.callers: set[_Caller] = set()

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.get_running_loop().create_server(lambda: _Caller(self), host, port, backlog=1024)
        return self._server.sockets[0].getsockname()[1]

    def refuse(self, peer: str) -> None:
        self.refused += 1
        if self.refused == 1 or self.refused % 1000 == 0:  # a flood writes a line per thousand
            log_event("gate-connection-refused", remote=peer, refused=self.refused,
                      outcome="refused: this address holds its share of the connections")

    def buffered(self) -> int:
        """Bytes the relays hold, written but not yet sent, both directions of every connection."""
        sides = [side for caller in self.callers for side in (caller, caller.other) if side is not None]
        return sum(side.transport.get_write_buffer_size() for side in sides)

    def relay(self, caller: _Caller) -> None:
        self.callers.add(caller)
        task = asyncio.ensure_future(self._join(caller))
        self._joining.add(task)
        task.add_done_callback(self._joining.discard)

    async def _join(self, caller: _Caller) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, str(self.upstream))
            _, upstream = await loop.create_unix_connection(_Side, sock=sock)
        except OSError:
            sock.close()
            caller.transport.abort()
            return
        if caller.transport.is_closing():
            upstream.transport.close()
            return
        caller.other, upstream.other = upstream, caller
        for data in caller.early:
            upstream.transport.write(data)
        caller.early.clear()
        caller.transport.resume_reading()

    def stop(self) -> None:
        """Accepts no more; relayed connections end as the gRPC server closes its side."""
        if self._server is not None:
            self._server.close()
        for task in list(self._joining):
            task.cancel()


def private_socket_path() -> Path:
    """A Unix socket path in a directory only this process's user may enter."""
    directory = Path(tempfile.mkdtemp(prefix="gate-"))
    os.chmod(directory, 0o700)
    return directory / "grpc.sock"
