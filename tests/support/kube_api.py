"""An in-process stand-in for the Kubernetes API server, as a pod sees it: HTTPS with a certificate
from the bundle's CA, the pod's service-account files, KUBERNETES_SERVICE_HOST/PORT. It records
every PATCH (path, headers, JSON body) and answers it (200 unless told otherwise)."""

from __future__ import annotations

import json
import ssl
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

SERVICE_ACCOUNT_TOKEN = "sa-token"


class _Recorder(BaseHTTPRequestHandler):
    calls: list
    status: int

    def do_PATCH(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.calls.append((self.path, dict(self.headers), json.loads(body)))
        self.send_response(self.status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@contextmanager
def stand_in_api_server(cert_and_key: tuple[Path, Path], ca_file: Path, account: Path, namespace: str,
                        monkeypatch, status: int = 200) -> Iterator[list]:
    """cert_and_key: a server pair whose SANs include 127.0.0.1, under the CA in ca_file; every
    PATCH is answered with status."""
    calls: list = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_Recorder,), {"calls": calls, "status": status}))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*cert_and_key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    account.mkdir(parents=True)
    (account / "token").write_text(SERVICE_ACCOUNT_TOKEN + "\n")
    (account / "namespace").write_text(namespace + "\n")
    (account / "ca.crt").write_bytes(ca_file.read_bytes())
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(server.server_address[1]))
    monkeypatch.setattr("bootstrap.ops.kube_secrets.SERVICE_ACCOUNT", account)
    try:
        yield calls
    finally:
        server.shutdown()
        server.server_close()
