"""A small HTTPS server for jwks.json (Temporal's key provider accepts only http/https URIs).

The JWKS file is re-read when it changes, and so are the TLS cert and key, so a key rollover or a
certificate rotation needs no restart. GET /healthz answers 200 while the current JWKS parses;
anything else but /jwks.json (or /.well-known/jwks.json) is 404. Runs on servers/service.py's
guarded aiohttp service: bounded connections, header deadlines, no thread per connection.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from aiohttp import web

from ..core.watched import WatchedFile
from .events import log_event
from .http import Limits, reply
from .service import Service
from .tls import ReloadingTLS

JWKS_PATHS = ("/jwks.json", "/.well-known/jwks.json")


def jwks_bytes(path: Path) -> bytes:
    """The file's bytes; ValueError unless they are a JWKS document."""
    data = path.read_bytes()
    doc = json.loads(data)
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError("not a JWKS document")
    return data


class JWKSSource:
    """The JWKS bytes of `path`, re-read when its mtime, size or inode change."""

    def __init__(self, path: Path):
        self.path, self._file = Path(path), WatchedFile(path, jwks_bytes)

    def current(self) -> bytes:
        """Raises ValueError/OSError if the file is missing or not a JWKS."""
        return self._file.current()


def _handler(source: JWKSSource):
    access_log = bool(os.environ.get("JWKS_ACCESS_LOG"))

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.method != "GET" or request.path not in (*JWKS_PATHS, "/healthz"):
            return reply(404, {"error": "not found"}, close=True)
        try:
            body = source.current()
        except (OSError, ValueError) as exc:
            log_event("jwks-unavailable", error=str(exc))  # the path stays in our log, not the reply
            return reply(503, {"status": "unavailable", "error": "jwks unavailable"})
        if access_log:
            log_event("jwks-request", path=request.path, remote=request.remote)
        if request.path == "/healthz":
            return reply(200, {"status": "ok"})
        return web.Response(body=body, content_type="application/json", headers={"Cache-Control": "max-age=30"})

    return handle


def make_app(jwks_path: Path) -> web.Application:
    app = web.Application(client_max_size=1024)
    app.router.add_route("*", "/{tail:.*}", _handler(JWKSSource(jwks_path)))
    return app


def make_server(host: str, port: int, jwks_path: Path, cert: Path | None, key: Path | None,
                limits: Limits = Limits()) -> Service:
    """Fails at start (OSError, ssl.SSLError) if the address or the cert is unusable."""
    tls = ReloadingTLS(cert, key) if cert and key else None
    return Service(make_app(jwks_path), host, port, tls, limits)
