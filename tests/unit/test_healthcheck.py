"""bundle-healthcheck (docker/bundle/healthcheck.py), the probe docker runs in the bundle's
containers: healthy only on HTTP 200 over a verified TLS connection, or on tokens with a third
of their lifetime left; anything else, including a wrong command line, is exit 1."""

from __future__ import annotations

import base64
import http.server
import importlib.util
import json
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bootstrap.core.pki import CA

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "docker/bundle/healthcheck.py"


def _load():
    spec = importlib.util.spec_from_file_location("bundle_healthcheck", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


healthcheck = _load()


def _write(directory: Path, name: str, leaf) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    cert.write_bytes(leaf.cert_pem())
    key.write_bytes(leaf.key_pem())
    return cert, key


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """An HTTPS server for localhost: /healthz answers 200, /broken 503."""
    directory = tmp_path_factory.mktemp("healthcheck")
    ca = CA.create()
    (directory / "ca.pem").write_bytes(ca.cert_pem())
    cert, key = _write(directory, "server", ca.issue_cert("localhost", usage="server"))
    foreign = CA.create("Foreign CA")
    (directory / "foreign.pem").write_bytes(foreign.cert_pem())

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200 if self.path == "/healthz" else 503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield directory, httpd.server_address[1]
    httpd.shutdown()


def test_https_200_over_a_verified_connection_is_healthy(server, capsys):
    directory, port = server
    assert healthcheck.main(["https", f"https://localhost:{port}/healthz", "--ca", str(directory / "ca.pem")]) == 0
    assert "HTTP 200" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["other status", "foreign ca", "wrong host name", "nothing listening", "http url"])
def test_anything_but_a_verified_200_is_unhealthy(server, case, capsys):
    directory, port = server
    url, ca = f"https://localhost:{port}/healthz", directory / "ca.pem"
    if case == "other status":
        url = f"https://localhost:{port}/broken"
    elif case == "foreign ca":
        ca = directory / "foreign.pem"
    elif case == "wrong host name":
        url = f"https://127.0.0.1:{port}/healthz"  # the cert names localhost only
    elif case == "nothing listening":
        url = "https://localhost:1/healthz"
    elif case == "http url":
        url = f"http://localhost:{port}/healthz"
    assert healthcheck.main(["https", url, f"--ca={ca}"]) == 1
    assert "unhealthy" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [[], ["https"], ["https", "https://localhost/healthz"], ["nope", "x"],
                                  ["https", "https://localhost/healthz", "--ca"],
                                  ["https", "https://localhost/healthz", "--bogus", "x"]])
def test_a_wrong_command_line_is_unhealthy_never_dockers_reserved_code(argv):
    assert healthcheck.main(argv) == 1


def _token(path: Path, issued: float, expires: float) -> None:
    payload = base64.urlsafe_b64encode(json.dumps({"iat": int(issued), "exp": int(expires)}).encode()).rstrip(b"=")
    path.write_text(f"e30.{payload.decode()}.sig\n")


def test_tokens_are_healthy_while_a_third_of_their_lifetime_is_left(tmp_path):
    now = time.time()
    _token(tmp_path / "worker.jwt", now - 100, now + 900)
    assert healthcheck.main(["tokens", str(tmp_path)]) == 0
    _token(tmp_path / "client.jwt", now - 900, now + 100)  # re-mint was due at two thirds
    assert healthcheck.main(["tokens", str(tmp_path)]) == 1


def test_no_tokens_is_unhealthy(tmp_path):
    assert healthcheck.main(["tokens", str(tmp_path)]) == 1


def test_the_script_runs_as_docker_runs_it(server):
    directory, port = server
    result = subprocess.run([sys.executable, str(SCRIPT), "https", f"https://localhost:{port}/healthz",
                             "--ca", str(directory / "ca.pem")], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def grpc_server(tmp_path_factory):
    """A gRPC server (grpcio, mutual TLS) whose health answer each test sets: the probe speaks
    HTTP/2 itself, so it is checked against a real gRPC implementation."""
    import grpc

    directory = tmp_path_factory.mktemp("grpc-health")
    ca = CA.create()
    (directory / "ca.pem").write_bytes(ca.cert_pem())
    server_cert, server_key = _write(directory, "server", ca.issue_cert("ui-gate", usage="server"))
    _write(directory, "client", ca.issue_cert(common_name="probe", usage="client"))
    _write(directory, "foreign", CA.create("Foreign CA").issue_cert(common_name="probe", usage="client"))
    state = {"answer": b"\x08\x01"}

    def check(request, context):
        if state["answer"] is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "upstream down")
        return state["answer"]

    handler = grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
        "Check": grpc.unary_unary_rpc_method_handler(check)})
    server = grpc.server(__import__("concurrent.futures").futures.ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers((handler,))
    credentials = grpc.ssl_server_credentials([(server_key.read_bytes(), server_cert.read_bytes())],
                                              root_certificates=ca.cert_pem(), require_client_auth=True)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    yield directory, port, state
    server.stop(0)


def _grpc_probe(directory: Path, port: int, client: str = "client", server_name: str = "ui-gate") -> int:
    return healthcheck.main(["grpc-health", f"127.0.0.1:{port}", f"--ca={directory / 'ca.pem'}",
                             f"--cert={directory / client}.pem", f"--key={directory / client}.key",
                             f"--server-name={server_name}", "--timeout=5"])


@pytest.mark.parametrize("answer,healthy", [(b"\x08\x01", True), (b"\x08\x02", False), (b"", False), (None, False)])
def test_grpc_health_is_healthy_only_on_serving(grpc_server, answer, healthy):
    directory, port, state = grpc_server
    state["answer"] = answer  # SERVING, NOT_SERVING, UNKNOWN, an error status
    try:
        assert _grpc_probe(directory, port) == (0 if healthy else 1)
    finally:
        state["answer"] = b"\x08\x01"


def test_grpc_health_needs_the_right_ca_and_server_name(grpc_server):
    directory, port, _ = grpc_server
    assert _grpc_probe(directory, port) == 0
    assert _grpc_probe(directory, port, client="foreign") == 1  # the server refuses the client cert
    assert _grpc_probe(directory, port, server_name="temporal") == 1  # not a SAN of the server cert
