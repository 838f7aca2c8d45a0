"""What the bundle's HTTPS services share, on aiohttp: a listener that caps connections and closes
the ones that idle or send headers too slowly, TLS that follows certificate re-issues, bounded
request bodies, JSON replies, CORS, and one JSON line per event on stderr.

Connections are counted from accept, before the TLS handshake, so a client that never finishes
its handshake or its headers holds a slot for at most `header_timeout` seconds. When every slot
is taken, the oldest connection that is not inside a handler makes room for the new one: slow
clients cannot lock out a legitimate one. Nothing here runs a thread per connection.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import contextlib
import gc
import json
import logging
import resource
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from . import MAX_CONNECTIONS
from .events import Refusal, clip, log_event

TLS_RECORD = 16 * 1024
# What one connection may buffer of a body nobody reads yet (its request waits for the body budget,
# or is being refused): aiohttp's default read buffer (256 KiB, paused at twice that) and asyncio's
# TLS incoming buffer (256 KiB) would let a connection that only started its body hold ~768 KiB,
# and a thousand such connections more than the container has. Two TLS records each, instead.
READ_BUFFER = TLS_RECORD  # aiohttp pauses reading at twice this
TLS_READ_BUFFER = 2 * TLS_RECORD
REPLY_CHUNK = 64 * 1024  # a reply goes out in slices: TLS encrypts each into its own buffer
# A request line and headers, all of them together (nginx's default: 4 buffers of 8k). aiohttp
# bounds only each header (8190 bytes) and their count (128): a connection trickling 1 MB of
# headers would hold ~2.3 MB of parser state, all of them together far more than a container has.
MAX_HEAD = 32 * 1024
# Parsed requests waiting behind the one being handled. Browsers, curl and the SDKs' HTTP clients
# never pipeline; aiohttp would queue 32, each with its headers.
MAX_QUEUED = 1
SERVER = "temporal-bundle"


@dataclass(frozen=True)
class Limits:
    max_connections: int = MAX_CONNECTIONS
    header_timeout: float = 10.0  # accept (or end of the last response) to complete headers
    body_timeout: float = 30.0
    max_body: int = 16 * 1024 * 1024


class _Protocol(web.RequestHandler):
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


def quiet_library_logs() -> None:
    """aiohttp would print parser errors with tracebacks; we log them as events instead."""
    for name in ("aiohttp.server", "aiohttp.access", "aiohttp.web"):
        logger = logging.getLogger(name)
        logger.addHandler(logging.NullHandler())
        logger.propagate = False


# --------------------------------------------------------------------------- replies and bodies


def reply(status: int, doc: dict, headers: dict | None = None, close: bool = False) -> web.Response:
    response = web.Response(status=status, body=json.dumps(doc).encode() + b"\n",
                            content_type="application/json", headers=headers)
    response.headers["Cache-Control"] = "no-store"  # decrypted data must never be cached
    if close:
        response.force_close()
    return response


def refusal_reply(refusal: Refusal, body_unread: bool) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="temporal-codec"'} if refusal.status == 401 else None
    # An unread body is never drained: the connection closes instead, so refusing costs nothing.
    return reply(refusal.status, {"error": refusal.message}, headers, close=body_unread)


class Budget:
    """Bytes of request bodies held at once; a request waits for its share before reading."""

    def __init__(self, total: int):
        self.total, self.free = total, total
        self._changed: asyncio.Condition | None = None

    @contextlib.asynccontextmanager
    async def hold(self, size: int, patience: float):
        size = min(size, self.total)
        self._changed = self._changed or asyncio.Condition()
        try:
            async with asyncio.timeout(patience), self._changed:
                await self._changed.wait_for(lambda: self.free >= size)
                self.free -= size
        except asyncio.TimeoutError:
            raise Refusal(503, "server busy, try again") from None
        try:
            yield
        finally:
            async with self._changed:
                self.free += size
                self._changed.notify_all()


def declared_length(request: web.BaseRequest, limits: Limits) -> int:
    """Checked before anything is read; aiohttp already answered 400 for a malformed value."""
    if request.content_length is None:
        raise Refusal(411, "Content-Length required")
    if request.content_length > limits.max_body:
        raise Refusal(413, f"body larger than {limits.max_body} bytes")
    return request.content_length


async def read_body(request: web.BaseRequest, length: int, limits: Limits) -> bytearray:
    """Exactly `length` bytes, into one buffer of that size (readexactly() would hold its chunks
    and their join at once: twice the body)."""
    body, filled = bytearray(length), 0
    try:
        async with asyncio.timeout(limits.body_timeout):
            while filled < length:
                chunk = await request.content.read(length - filled)
                if not chunk:
                    break
                body[filled:filled + len(chunk)] = chunk
                filled += len(chunk)
    except (asyncio.TimeoutError, ConnectionError):
        pass
    if filled < length:
        # Freed now: a traceback through this frame, caught in a reference cycle, would keep the
        # buffer until the collector's next run, which counts objects, not bytes.
        del body
        raise Refusal(408, "request body incomplete or too slow")
    return body


# --------------------------------------------------------------------------- CORS


def cors_headers(request: web.BaseRequest, origins: tuple[str, ...]) -> dict:
    origin = request.headers.get("Origin")
    if origin is None or origin not in origins:
        return {"Vary": "Origin"}
    # The UI's "include cross-origin credentials" sends fetch(credentials: include), which the
    # browser completes only when this is true; the origin is never "*".
    return {"Vary": "Origin", "Access-Control-Allow-Origin": origin, "Access-Control-Allow-Credentials": "true"}


def cors_middleware(origins: tuple[str, ...]):
    @web.middleware
    async def cors(request: web.BaseRequest, handler):
        response = await handler(request)
        if not response.prepared:  # a streamed reply set them itself
            response.headers.update(cors_headers(request, origins))
        return response

    return cors


async def stream_reply(request: web.BaseRequest, body: bytes, headers: dict) -> web.StreamResponse:
    """Send `body` now, with flow control, so the caller can keep holding its memory budget until
    the bytes have left (a reply queued after the handler returned would escape the budget)."""
    response = web.StreamResponse(headers={**headers, "Content-Type": "application/json", "Cache-Control": "no-store"})
    response.content_length = len(body)
    await response.prepare(request)
    view = memoryview(body)
    for start in range(0, len(body), REPLY_CHUNK):  # each write waits while the socket is behind
        await response.write(view[start:start + REPLY_CHUNK])
    await response.write_eof()
    return response


# --------------------------------------------------------------------------- TLS


def file_stamp(*paths: Path) -> tuple:
    """What changes when a file is rewritten or replaced: (mtime, size, inode) of each."""
    return tuple((p.stat().st_mtime_ns, p.stat().st_size, p.stat().st_ino) for p in paths)


class ReloadingTLS:
    """The listener's SSLContext hands every handshake the context for the current cert and key
    files (via the SNI callback, which runs for every ClientHello), rebuilt when they change.
    A half-written pair (cert replaced, key not yet) keeps the last good context."""

    def __init__(self, cert: Path, key: Path):
        self.cert, self.key = Path(cert), Path(key)
        self._stamp, self._context = None, None
        self.context()  # fail at start, not on the first handshake, if the pair is unusable
        self.listener = self._build()
        self.listener.sni_callback = self._select

    def _build(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert, self.key)
        return ctx

    def context(self) -> ssl.SSLContext:
        stamp = file_stamp(self.cert, self.key)
        if stamp != self._stamp:
            try:
                self._context, self._stamp = self._build(), stamp
            except (OSError, ssl.SSLError):
                if self._context is None:
                    raise
        return self._context

    def _select(self, sslobj, server_name, listener) -> None:
        with contextlib.suppress(OSError, ssl.SSLError):
            sslobj.context = self.context()


# --------------------------------------------------------------------------- connections


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


def shrink_tls_buffers() -> None:
    """asyncio's TLS transport gives every connection a 256 KiB read buffer from accept on:
    a thousand idle connections would hold 256 MB. One TLS record (16 KiB) is all a read needs."""
    asyncio.sslproto.SSLProtocol.max_size = TLS_RECORD


def raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


# --------------------------------------------------------------------------- the service


class Service:
    """An aiohttp application on a guarded listener, with the interface of socketserver's
    servers: `server_address`, `serve_forever()` (blocks), `shutdown()` (from another thread),
    `server_close()`."""

    def __init__(self, app: web.Application, host: str, port: int, tls: ReloadingTLS | None, limits: Limits):
        raise_fd_limit(limits.max_connections + 64)
        quiet_library_logs()
        shrink_tls_buffers()
        self.app, self.tls, self.limits = app, tls, limits
        self.guard = ConnectionGuard(limits)
        app.middlewares[0:0] = [self.guard.middleware(), _errors]
        app.on_response_prepare.append(_server_header)
        self.socket = listen(host, port, self.guard)
        self.server_address = self.socket.getsockname()[:2]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._stopped = threading.Event()

    def serve_forever(self) -> None:
        try:
            asyncio.run(self._serve())
        finally:
            self._stopped.set()

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        self._loop.set_exception_handler(_loop_error)
        options = {"keepalive_timeout": self.limits.header_timeout, "lingering_time": 0, "access_log": None,
                   "read_bufsize": READ_BUFFER}
        runner = web.AppRunner(self.app, handle_signals=False, **options)
        await runner.setup()
        tls = {"ssl": self.tls.listener, "ssl_handshake_timeout": self.limits.header_timeout} if self.tls else {}
        server = await self._loop.create_server(
            lambda: _Protocol(runner.server, loop=self._loop, **options), sock=self.socket, backlog=1024, **tls)
        reaper = asyncio.create_task(self.guard.reap_forever())
        # Everything imported so far (protobuf, the SDK's modules) lives as long as the process; kept
        # out of the collector, a full collection no longer walks it for every few batches decoded.
        gc.freeze()
        try:
            await self._stop.wait()
        finally:
            reaper.cancel()
            server.close()
            await runner.cleanup()

    def shutdown(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._stopped.wait(10)

    def server_close(self) -> None:
        self.socket.close()


@web.middleware
async def _errors(request: web.BaseRequest, handler):
    """A bug answers 500 without internals and leaves one event in the log (aiohttp's own
    logger, which would print the traceback, is quiet)."""
    try:
        return await handler(request)
    except (web.HTTPException, ConnectionError, asyncio.CancelledError):
        raise
    except Exception as exc:  # noqa: BLE001 (the point is to catch what nothing else did)
        log_event("internal-error", path=clip(request.path), error=type(exc).__name__, detail=clip(exc))
        return reply(500, {"error": "internal error"}, close=True)


async def _server_header(request: web.BaseRequest, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER  # not the library and its version


def _loop_error(loop, context: dict) -> None:
    """Dropped connections and failed handshakes are the client's problem; log them as one
    event without internals rather than let asyncio print a traceback."""
    error = context.get("exception")
    log_event("connection-error", error=type(error).__name__ if error else clip(context.get("message")))
