"""Terminal login, the loopback side (RFC 8252): one request on 127.0.0.1:<port>, then closed."""

from __future__ import annotations

import html
from http.server import BaseHTTPRequestHandler, HTTPServer

from ..core.cli_login import LOOPBACK_HOST, parse_callback, redirect_uri
from ..errors import BundleError


class _Callback(BaseHTTPRequestHandler):
    timeout = 10  # a connection that sends nothing does not hold the login
    server_version = "temporal-bundle-login"
    sys_version = ""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self.server.target = self.path
        try:
            self.server.code = parse_callback(self.path, self.server.state)
            status, text = 200, "Login received. You can close this tab and return to the terminal."
        except BundleError as exc:
            self.server.failure = exc
            status, text = 400, f"Login failed: {exc}"
        body = f"<!doctype html><title>temporal-bundle login</title><p>{html.escape(text)}</p>\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # noqa: A002 - the request line holds the code: never logged
        pass


class CallbackListener:
    """127.0.0.1 only; serves exactly one request, then closes."""

    def __init__(self, state: str, port: int = 0):
        try:
            self.server = HTTPServer((LOOPBACK_HOST, port), _Callback)
        except OSError as exc:
            raise BundleError(f"cannot listen on {LOOPBACK_HOST}:{port} for the login callback: "
                              f"{exc.strerror or exc}") from None
        self.server.state, self.server.code, self.server.failure, self.server.target = state, "", None, None

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def wait(self, timeout: float) -> str:
        self.server.timeout = timeout
        try:
            self.server.handle_request()
        finally:
            self.close()
        if self.server.failure is not None:
            raise self.server.failure
        if self.server.target is None:
            raise BundleError(f"no login callback reached {redirect_uri(self.port)} within {timeout:g} s")
        return self.server.code

    def close(self) -> None:
        self.server.server_close()
