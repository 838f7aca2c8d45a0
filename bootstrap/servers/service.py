"""An HTTPS service's life: process tuning, the guarded listener, the error middleware, start
and stop from another thread."""

from __future__ import annotations

import asyncio
import gc
import logging
import resource
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from aiohttp import web

from .connections import READ_BUFFER, ConnectionGuard, Protocol, listen
from .events import Refusal, clip, log_event
from .http import SERVER, Limits, reply
from .tls import ReloadingTLS, shrink_tls_buffers


def quiet_library_logs() -> None:
    """aiohttp would print parser errors with tracebacks; we log them as events instead."""
    for name in ("aiohttp.server", "aiohttp.access", "aiohttp.web"):
        logger = logging.getLogger(name)
        logger.addHandler(logging.NullHandler())
        logger.propagate = False


def raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


# --------------------------------------------------------------------------- the service


@dataclass(frozen=True)
class ErrorReplies:
    """A service's own JSON for a path no route has, a method a route does not take (given the
    path and the methods its routes do take), and a handler's Refusal."""

    not_found: Callable[[], web.Response]
    not_allowed: Callable[[str, set[str]], web.Response]
    refused: Callable[[Refusal], web.Response]

    def answer(self, request: web.BaseRequest, error: Exception) -> web.Response:
        if isinstance(error, Refusal):
            return self.refused(error)
        if isinstance(error, web.HTTPMethodNotAllowed):
            return self.not_allowed(request.path, set(error.allowed_methods))
        return self.not_found()


class Service:
    """An aiohttp application on a guarded listener, with the interface of socketserver's
    servers: `server_address`, `serve_forever()` (blocks), `shutdown()` (from another thread),
    `server_close()`. With `replies`, the router's 404 and 405 and a handler's Refusal are answered
    with them; without, aiohttp's own answers stand."""

    def __init__(self, app: web.Application, host: str, port: int, tls: ReloadingTLS | None, limits: Limits,
                 replies: ErrorReplies | None = None):
        raise_fd_limit(limits.max_connections + 64)
        quiet_library_logs()
        shrink_tls_buffers()
        self.app, self.tls, self.limits = app, tls, limits
        self.guard = ConnectionGuard(limits)
        app.middlewares.insert(0, self.guard.middleware())
        # Innermost: an error reply is the application's reply, with its CORS headers.
        app.middlewares.append(_errors(replies))
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
            lambda: Protocol(runner.server, loop=self._loop, **options), sock=self.socket, backlog=1024, **tls)
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


def _errors(replies: ErrorReplies | None):
    @web.middleware
    async def errors(request: web.BaseRequest, handler):
        """A bug answers 500 without internals and leaves one event in the log: the exception's
        type and where it was raised, never its text (it may quote a payload) or a traceback
        (aiohttp's own logger, which would print one, is quiet)."""
        try:
            return await handler(request)
        except (web.HTTPNotFound, web.HTTPMethodNotAllowed, Refusal) as error:
            if replies is None:
                raise
            response = replies.answer(request, error)
        except (web.HTTPException, ConnectionError, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001 (the point is to catch what nothing else did)
            log_event("internal-error", path=clip(request.path), error=type(exc).__name__, at=_raised_at(exc))
            return reply(500, {"error": "internal error"}, close=True)
        if request.body_exists and not request.content.at_eof():
            response.force_close()  # an unread body is never drained: the connection closes instead
        return response

    return errors


def _raised_at(exc: Exception) -> str | None:
    frames = traceback.extract_tb(exc.__traceback__)
    return f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else None


async def _server_header(request: web.BaseRequest, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER  # not the library and its version


def _loop_error(loop, context: dict) -> None:
    """Dropped connections and failed handshakes are the client's problem; log them as one
    event without internals rather than let asyncio print a traceback."""
    error = context.get("exception")
    log_event("connection-error", error=type(error).__name__ if error else clip(context.get("message")))
