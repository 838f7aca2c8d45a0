"""What the bundle's HTTPS handlers share, on aiohttp: bounded request bodies, JSON replies and
CORS. The listener is in connections.py, TLS in tls.py, the service around them in service.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass

from aiohttp import web

from . import MAX_CONNECTIONS
from .events import Refusal

REPLY_CHUNK = 64 * 1024  # a reply goes out in slices: TLS encrypts each into its own buffer
SERVER = "temporal-bundle"


@dataclass(frozen=True)
class Limits:
    max_connections: int = MAX_CONNECTIONS
    header_timeout: float = 10.0  # accept (or end of the last response) to complete headers
    body_timeout: float = 30.0
    max_body: int = 16 * 1024 * 1024



# --------------------------------------------------------------------------- replies and bodies


def reply(status: int, doc: dict, headers: dict | None = None, close: bool = False) -> web.Response:
    response = web.Response(status=status, body=json.dumps(doc).encode() + b"\n",
                            content_type="application/json", headers=headers)
    response.headers["Cache-Control"] = "no-store"  # decrypted data must never be cached
    if close:
        response.force_close()
    return response


def refusal_reply(refusal: Refusal) -> web.Response:
    """The service's error middleware closes the connection when the body was not read."""
    headers = {"WWW-Authenticate": 'Bearer realm="temporal-codec"'} if refusal.status == 401 else None
    return reply(refusal.status, {"error": refusal.message}, headers)


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


def cors_middleware(origins: tuple[str, ...], preflight=None):
    """With `preflight(request) -> response`, an OPTIONS request on any path is a CORS preflight,
    answered before (and whatever) the router found."""

    @web.middleware
    async def cors(request: web.BaseRequest, handler):
        if preflight is not None and request.method == "OPTIONS":
            response = preflight(request)
        else:
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

