"""The listener of the bundle's HTTPS services: it caps connections and closes the ones that idle
or send headers too slowly, and bounds what one connection may buffer.

Connections are counted from accept, before the TLS handshake, so a client that never finishes
its handshake or its headers holds a slot for at most `header_timeout` seconds. When every slot
is taken, the oldest connection that is not inside a handler makes room for the new one: slow
clients cannot lock out a legitimate one. Nothing here runs a thread per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from dataclasses import dataclass, field

from aiohttp import web

from .events import Refusal, log_event
from .http import SERVER, Limits, reply
from .tls import TLS_READ_BUFFER, TLS_RECORD

# What one connection may buffer of a body nobody reads yet (its request waits for the body budget,
# or is being refused): aiohttp's default read buffer (256 KiB, paused at twice that) and asyncio's
# TLS incoming buffer (256 KiB) would let a connection that only started its body hold ~768 KiB,
# and a thousand such connections more than the container has. Two TLS records each, instead.
READ_BUFFER = TLS_RECORD  # aiohttp pauses reading at twice this
# A request line and headers, all of them together (nginx's default: 4 buffers of 8k). aiohttp
# bounds only each header (8190 bytes) and their count (128): a connection trickling 1 MB of
# headers would hold ~2.3 MB of parser state, all of them together far more than a container has.
MAX_HEAD = 32 * 1024
# Parsed requests waiting behind the one being handled. Browsers, curl and the SDKs' HTTP clients
# never pipeline; aiohttp would queue 32, each with its headers.
MAX_QUEUED = 1


class Protocol(web.RequestHandler):
    """aiohttp answers a request it cannot parse (a bad Content-Length, say) itself, before any
    handler runs; here that answer is ours: audited, and without the parser's text (which echoes
    the caller's bytes) or the library's name and version."""

    head_bytes = 0  # received since the last request's head ended, while no body was due
    last_body = None  # the last parsed request's body stream

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if hasattr(transport, "set_read_buffer_limits"):  # TLS: plain sockets have no such buffer
            transport.set_read_buffer_limits(high=TLS_READ_BUFFER)

    def data_received(self, data: bytes) -> None:
        parsed = self._request_count
        super().data_received(data)
        if self._request_count != parsed:  # a head ended: what follows is its body, or the next head
            self.last_body, self.head_bytes = self._messages[-1][1] if self._messages else None, 0
        elif self.last_body is None or self.last_body.is_eof():
            self.head_bytes += len(data)
        transport = self.transport
        if (self.head_bytes > MAX_HEAD or len(self._messages) > MAX_QUEUED) and transport and not transport.is_closing():
            peer = transport.get_extra_info("peername")
            log_event("bad-request", status=431, remote=peer[0] if isinstance(peer, tuple) else None,
                      outcome="refused: request head too large, or requests pipelined")
            self.force_close()
            transport.close()

    def handle_error(self, request, status=500, exc=None, message=None):
        if request.writer.output_size > 0:
            raise ConnectionError("the reply had already started")
        bad = status < 500
        # Only the kind of error: the parser's message quotes the bytes it choked on, which can be
        # a body (an HTTP/1.0 request without Content-Length sends it where a request line belongs).
        log_event("bad-request" if bad else "internal-error", status=status, remote=request.remote,
                  outcome="refused: malformed HTTP request" if bad else None,
                  error=type(exc).__name__ if exc is not None else None)
        response = reply(status, {"error": "malformed HTTP request" if bad else "internal error"}, close=True)
        response.headers["Server"] = SERVER
        return response


@dataclass
class _Conn:
    sock: socket.socket
    since: float
    busy: bool = False


class _CountedSocket(socket.socket):
    """An accepted connection that tells the guard when asyncio closes it."""

    def close(self) -> None:
        hook, self.on_close = getattr(self, "on_close", None), None
        if hook is not None:
            hook(self)
        super().close()


@dataclass
class ConnectionGuard:
    limits: Limits
    conns: dict = field(default_factory=dict)  # fd -> _Conn, in accept order

    def admit(self, conn: _CountedSocket) -> bool:
        if len(self.conns) >= self.limits.max_connections and not self._evict_oldest_idle():
            return False
        conn.fd = conn.fileno()
        conn.on_close = self._forget
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # replies must not wait for an ACK
        self.conns[conn.fd] = _Conn(conn, time.monotonic())
        return True

    def _forget(self, conn: _CountedSocket) -> None:
        if self.conns.get(conn.fd, None) is not None and self.conns[conn.fd].sock is conn:
            del self.conns[conn.fd]

    def _evict_oldest_idle(self) -> bool:
        for fd, record in self.conns.items():
            if not record.busy:
                self._drop(fd)
                return True
        return False

    def _drop(self, fd: int) -> None:
        # shutdown, not close: asyncio still owns the fd; it sees EOF and closes its transport.
        record = self.conns.pop(fd)
        with contextlib.suppress(OSError):
            record.sock.shutdown(socket.SHUT_RDWR)

    def set_busy(self, request: web.BaseRequest, busy: bool) -> None:
        sock = request.transport.get_extra_info("socket") if request.transport else None
        record = self.conns.get(sock.fileno()) if sock is not None else None
        if record is not None:
            record.busy, record.since = busy, time.monotonic()

    def reap(self) -> None:
        deadline = time.monotonic() - self.limits.header_timeout
        for fd in [fd for fd, r in self.conns.items() if not r.busy and r.since < deadline]:
            self._drop(fd)

    async def reap_forever(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.limits.header_timeout / 4))
            self.reap()

    def middleware(self):
        @web.middleware
        async def track(request: web.BaseRequest, handler):
            self.set_busy(request, True)
            try:
                return await handler(request)
            finally:
                self.set_busy(request, False)

        return track


class _Listener(socket.socket):
    """A listening socket whose accept() admits connections through the guard."""

    def accept(self):
        fd, address = self._accept()
        conn = _CountedSocket(self.family, self.type, self.proto, fileno=fd)
        if not self.guard.admit(conn):
            conn.close()
            raise ConnectionAbortedError("connection limit reached")  # asyncio skips it quietly
        return conn, address


def listen(host: str, port: int, guard: ConnectionGuard) -> _Listener:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                        flags=socket.AI_PASSIVE)[0]
    sock = _Listener(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    sock.guard = guard
    return sock


class CallerShare:
    """Requests one caller (a token's issuer and subject) may have inside handlers at once.

    A request inside its handler is busy: the oldest-idle eviction cannot reach it, and it may wait
    up to the body deadline for a body that never comes. Without a share, one valid token could hold
    every connection that way; with it, at most `per_caller` of them, and its further requests are
    refused at once (429) and their connections closed."""

    def __init__(self, per_caller: int):
        self.per_caller = per_caller
        self.busy: dict[tuple, int] = {}

    @contextlib.contextmanager
    def hold(self, caller: tuple):
        if self.busy.get(caller, 0) >= self.per_caller:
            raise Refusal(429, "too many requests in flight for this token")
        self.busy[caller] = self.busy.get(caller, 0) + 1
        try:
            yield
        finally:
            self.busy[caller] -= 1
            if not self.busy[caller]:
                del self.busy[caller]


def caller_of(claims: dict) -> tuple:
    return (claims.get("iss"), claims.get("sub"))
