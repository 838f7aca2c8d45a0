"""A tiny HTTPS server for jwks.json (Temporal's key provider accepts only http/https URIs).

The JWKS file is re-read when its mtime changes, and so are the TLS cert and key, so a key
rollover or a certificate rotation needs no restart. GET /healthz answers 200 while the current
JWKS parses; anything else but /jwks.json is 404.
"""

from __future__ import annotations

import json
import os
import ssl
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class _Cached:
    stamp: tuple | None = None
    value: object = None


def _stamp(*paths: Path) -> tuple:
    return tuple((p.stat().st_mtime_ns, p.stat().st_size) for p in paths)


class JWKSSource:
    def __init__(self, path: Path):
        self.path, self._cache, self._lock = path, _Cached(), threading.Lock()

    def current(self) -> bytes:
        """The JWKS bytes; raises ValueError/OSError if the file is missing or not a JWKS."""
        with self._lock:
            stamp = _stamp(self.path)
            if stamp != self._cache.stamp:
                data = self.path.read_bytes()
                doc = json.loads(data)
                if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
                    raise ValueError("not a JWKS document")
                self._cache = _Cached(stamp, data)
            return self._cache.value


class ReloadingTLS:
    """An SSLContext rebuilt whenever the certificate or key file changes."""

    def __init__(self, cert: Path, key: Path):
        self.cert, self.key, self._cache, self._lock = cert, key, _Cached(), threading.Lock()

    def context(self) -> ssl.SSLContext:
        with self._lock:
            stamp = _stamp(self.cert, self.key)
            if stamp != self._cache.stamp:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                ctx.minimum_version = ssl.TLSVersion.TLSv1_2
                ctx.load_cert_chain(self.cert, self.key)
                self._cache = _Cached(stamp, ctx)
            return self._cache.value


class _Handler(BaseHTTPRequestHandler):
    server_version = "temporal-bundle-jwks"
    sys_version = ""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        path = self.path.split("?", 1)[0]
        if path not in ("/jwks.json", "/.well-known/jwks.json", "/healthz"):
            return self._send(404, b'{"error":"not found"}\n')
        try:
            body = self.server.jwks.current()
        except (OSError, ValueError) as exc:
            return self._send(503, json.dumps({"error": f"jwks unavailable: {exc}"}).encode() + b"\n")
        if path == "/healthz":
            return self._send(200, b'{"status":"ok"}\n')
        self._send(200, body, cache="max-age=30")

    def _send(self, status: int, body: bytes, cache: str = "no-store") -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        if os.environ.get("JWKS_ACCESS_LOG"):
            super().log_message(fmt, *args)


class JWKSServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a client stalled mid-handshake must not hold up shutdown

    def __init__(self, address: tuple[str, int], jwks: JWKSSource, tls: ReloadingTLS | None):
        self.jwks, self.tls = jwks, tls
        super().__init__(address, _Handler)

    def get_request(self):
        sock, addr = super().get_request()
        if self.tls is not None:
            sock.settimeout(10)
            # The handshake runs lazily in the handler thread, so a slow client cannot stall accept().
            sock = self.tls.context().wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def handle_error(self, request, client_address):
        pass  # a client that fails the handshake is its problem, not a traceback in our log


def make_server(host: str, port: int, jwks_path: Path, cert: Path | None, key: Path | None) -> JWKSServer:
    tls = ReloadingTLS(cert, key) if cert and key else None
    if tls is not None:
        tls.context()  # fail at start, not on the first request, if the cert is unusable
    return JWKSServer((host, port), JWKSSource(jwks_path), tls)
