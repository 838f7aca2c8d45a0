"""The bundle's health checks. bundle-healthcheck (docker/bundle/healthcheck.py): healthy only on
HTTP 200 over a verified TLS connection, or on tokens with a third of their lifetime left; anything
else, including a wrong command line, is exit 1. grpc-health-probe as docker-compose.prod.yml runs
it: healthy only on SERVING from the listener it is pointed at, over mutual TLS with our CA."""

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
from concurrent import futures
from pathlib import Path

import grpc
import pytest
import yaml

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
                                  ["https", "https://localhost/healthz", "--bogus", "x"],
                                  ["https", "https://localhost/healthz", "--ca", "x", "--timeout", "1"],
                                  ["tokens"], ["tokens", "a", "b"],
                                  ["grpc-health", "127.0.0.1:7233", "--ca=x"]])  # grpc-health-probe's job now
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


WORKFLOW_SERVICE = "temporal.api.workflowservice.v1.WorkflowService"
SERVING, NOT_SERVING, UNKNOWN = b"\x08\x01", b"\x08\x02", b""


@pytest.fixture(scope="module")
def probe() -> str:
    """The cached grpc-health-probe build (scripts/prebuild.sh makes it; built here if missing)."""
    out = subprocess.run(["bash", str(REPO / "scripts/build-health-probe.sh")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


def _grpc_health_server(credentials, state: dict) -> tuple[grpc.Server, int]:
    """grpcio serving grpc.health.v1.Health/Check: the answer for the requested service from
    state (the frontend answers per service too), an error status for None."""
    def check(request: bytes, context):
        service = request[2:2 + request[1]].decode() if request[:1] == b"\n" else ""
        answer = state.get(service)
        if answer is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        return answer

    handler = grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
        "Check": grpc.unary_unary_rpc_method_handler(check)})
    server = grpc.server(futures.ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers((handler,))
    address = "127.0.0.1:0"
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    server.start()
    return server, port


@pytest.fixture(scope="module")
def listeners(tmp_path_factory):
    """The gate as compose's probe sees it (mutual TLS, a server cert for ui-gate from our CA),
    and wrong listeners on the same name: one with a cert from another CA, one in plaintext."""
    directory = tmp_path_factory.mktemp("grpc-health")
    ca, foreign = CA.create(), CA.create("Foreign CA")
    (directory / "ca.pem").write_bytes(ca.cert_pem())
    server_cert, server_key = _write(directory, "server", ca.issue_cert("ui-gate", usage="server"))
    impostor_cert, impostor_key = _write(directory, "impostor", foreign.issue_cert("ui-gate", usage="server"))
    _write(directory, "client", ca.issue_cert(common_name="probe", usage="client"))
    _write(directory, "foreign-client", foreign.issue_cert(common_name="probe", usage="client"))
    state = {WORKFLOW_SERVICE: SERVING, "": SERVING}
    ours = grpc.ssl_server_credentials([(server_key.read_bytes(), server_cert.read_bytes())],
                                       root_certificates=ca.cert_pem(), require_client_auth=True)
    # The impostor takes any client certificate and answers SERVING: only our CA stops the probe.
    impostor = grpc.ssl_server_credentials([(impostor_key.read_bytes(), impostor_cert.read_bytes())])
    servers = {name: _grpc_health_server(credentials, state if name == "ours" else {WORKFLOW_SERVICE: SERVING})
               for name, credentials in (("ours", ours), ("impostor", impostor), ("plaintext", None))}
    yield directory, {name: port for name, (_, port) in servers.items()}, state
    for server, _ in servers.values():
        server.stop(0)


def _compose_probe_argv(probe: str, directory: Path, port: int) -> list[str]:
    """The ui-gate's health check from docker-compose.prod.yml, its files and address moved here."""
    doc = yaml.safe_load((REPO / "docker-compose.prod.yml").read_text())
    kind, _, *flags = doc["services"]["ui-gate"]["healthcheck"]["test"]
    assert kind == "CMD"
    moved = {"/bundle/trust/ca.pem": directory / "ca.pem", "/bundle/ui-gate/client.pem": directory / "client.pem",
             "/bundle/ui-gate/client.key": directory / "client.key"}
    argv = [probe]
    for flag in flags:
        name, has_value, value = flag.partition("=")
        if name == "-addr":
            value = f"127.0.0.1:{port}"
        elif name == "-connect-timeout":
            value = "1s"  # a refused handshake is retried until then: 1 s is plenty on loopback
        argv.append(f"{name}={moved.get(value, value)}" if has_value else flag)
    return argv


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("answer,healthy", [(SERVING, True), (NOT_SERVING, False), (UNKNOWN, False), (None, False)])
def test_the_compose_probe_is_healthy_only_on_serving(probe, listeners, answer, healthy):
    directory, ports, state = listeners
    state[WORKFLOW_SERVICE] = answer  # SERVING, NOT_SERVING, UNKNOWN, an error status
    try:
        result = _run(_compose_probe_argv(probe, directory, ports["ours"]))
        assert (result.returncode == 0) == healthy, result.stderr
    finally:
        state[WORKFLOW_SERVICE] = SERVING


def test_the_compose_probe_asks_for_the_workflow_service_not_the_whole_server(probe, listeners):
    """The frontend's "" is SERVING as soon as it listens; its WorkflowService only once
    membership is ready."""
    directory, ports, state = listeners
    state[WORKFLOW_SERVICE] = NOT_SERVING
    try:
        assert _run(_compose_probe_argv(probe, directory, ports["ours"])).returncode != 0
    finally:
        state[WORKFLOW_SERVICE] = SERVING


def _without(argv: list[str], *names: str) -> list[str]:
    return [a for a in argv if a.partition("=")[0] not in names]


@pytest.mark.parametrize("case", ["impostor's CA", "plaintext listener", "no client cert", "foreign client cert",
                                  "wrong server name"])
def test_the_compose_probe_fails_on_a_wrong_or_unauthenticated_listener(probe, listeners, case):
    """Each case changes one thing against the healthy run; every listener here answers SERVING."""
    directory, ports, _ = listeners
    healthy = _compose_probe_argv(probe, directory, ports["ours"])
    assert _run(healthy).returncode == 0
    argv = {
        "impostor's CA": _compose_probe_argv(probe, directory, ports["impostor"]),
        "plaintext listener": _compose_probe_argv(probe, directory, ports["plaintext"]),
        "no client cert": _without(healthy, "-tls-client-cert", "-tls-client-key"),
        "foreign client cert": [a.replace(f"{directory}/client.", f"{directory}/foreign-client.") for a in healthy],
        "wrong server name": [a.replace("-tls-server-name=ui-gate", "-tls-server-name=temporal") for a in healthy],
    }[case]
    assert argv != healthy
    result = _run(argv)
    assert result.returncode != 0, result.stdout
    assert "status: SERVING" not in result.stdout + result.stderr, result.stderr
    assert result.returncode in (2, 3), result.stderr  # connection or RPC failure: refused, not unhealthy
