"""The UI gate (serve-ui-gate) in front of the real server, from both sides.

A user whose token names namespaces only (`default:read`) is refused GetClusterInfo and
ListNamespaces by the frontend itself; through the gate they get the recorded cluster info and
exactly the namespaces the frontend lets them describe. Everything else still goes to the frontend
with their token and is authorized there: the gate gives no right the token lacks. Invalid tokens
(expired, unknown kid, forged with a known kid, wrong audience, alg none, a tampered payload) get a
refusal (the gate's own, in the frontend's words, before it reads a body), never a gate answer. Callers need a client-domain certificate; the gate
forwards nothing but the WorkflowService, the OperatorService and the health check.
"""

from __future__ import annotations

import asyncio
import gc
import base64
import json
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from temporalio.api.enums.v1 import TaskQueueKind
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import (
    DescribeNamespaceRequest,
    GetClusterInfoRequest,
    ListNamespacesRequest,
    StartWorkflowExecutionRequest,
)
from temporalio.api.common.v1 import WorkflowType
from temporalio.client import Client
from temporalio.service import RPCStatusCode, TLSConfig

from bootstrap.core.pki import utcnow
from bootstrap.core.tokens import SigningKey
from tests.support.binaries import temporal_bin_dir
from tests.support.forged_tokens import alg_none, b64, forged_with_known_kid, token
from tests.support.ports import free_port
from tests.support.ui_gate import FORWARDED_SERVICES, call_status, start_gate
from tests.support.waits import wait_until

pytestmark = [pytest.mark.server, pytest.mark.timeout(600)]

REFUSED = (RPCStatusCode.PERMISSION_DENIED, RPCStatusCode.UNAUTHENTICATED)


def _tampered(token: str, permissions: list[str]) -> str:
    """A real token whose payload now claims other permissions, the signature left as it was."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["groups"] = claims["permissions"] = permissions
    return f"{header}.{b64(claims)}.{signature}"


@pytest.fixture(scope="module")
def gate(sqlite_cluster, tmp_path_factory):
    cluster = sqlite_cluster
    info = tmp_path_factory.mktemp("gate") / "cluster.json"
    # What the compose registration job does: register (idempotent here) and record the cluster info.
    subprocess.run([sys.executable, "-m", "bootstrap", "register-namespaces", "--config", str(cluster.config_path),
                    "--out", str(cluster.bundle), "--address", cluster.address, "--cluster-info", str(info)],
                   check=True, capture_output=True, text=True, timeout=120)
    process, address = start_gate(cluster, cluster.address, info)
    yield cluster, address, info
    process.terminate()
    process.wait(10)


async def _client(cluster, address: str, token: str | None, cert: str = "ui/client", server_name: str = "ui-gate") -> Client:
    bundle = cluster.bundle
    tls = TLSConfig(server_root_ca_cert=(bundle / "trust/ca.pem").read_bytes(),
                    client_cert=(bundle / f"{cert}.pem").read_bytes(),
                    client_private_key=(bundle / f"{cert}.key").read_bytes(), domain=server_name)
    for attempt in range(20):
        try:
            return await Client.connect(address, namespace="default", api_key=token, tls=tls,
                                        connect_timeout=timedelta(seconds=10))
        except RuntimeError as exc:
            # The gate's front resets a connection beyond this address's share: the previous
            # test's connections may not all be closed yet.
            if "Connection reset" not in str(exc) or attempt == 19:
                raise
            await asyncio.sleep(0.25)


def _run(coro):
    """coro in a new loop; then the clients it made are collected, which closes their connections:
    every test here connects from 127.0.0.1, and the gate holds one address to 8 connections."""
    try:
        return asyncio.run(coro)
    finally:
        gc.collect()


async def _list(cluster, address, token, **kwargs) -> list[str]:
    client = await _client(cluster, address, token, **kwargs)
    answer = await client.workflow_service.list_namespaces(ListNamespacesRequest(page_size=100))
    return sorted(n.namespace_info.name for n in answer.namespaces)


def test_the_frontend_itself_refuses_the_two_cluster_calls_to_a_namespace_reader(gate):
    cluster, _, _ = gate
    frontend_cert = "clients/reader"

    async def check():
        client = await _client(cluster, cluster.address, cluster.token("reader"), cert=frontend_cert, server_name="localhost")
        assert await call_status(client.workflow_service.list_namespaces(ListNamespacesRequest())) == RPCStatusCode.PERMISSION_DENIED
        assert await call_status(client.workflow_service.get_cluster_info(GetClusterInfoRequest())) == RPCStatusCode.PERMISSION_DENIED

    _run(check())


def test_through_the_gate_a_reader_lists_exactly_their_namespace_and_gets_the_cluster_info(gate):
    cluster, address, _ = gate

    async def check():
        assert await _list(cluster, address, cluster.token("reader")) == ["default"]
        client = await _client(cluster, address, cluster.token("reader"))
        info = await client.workflow_service.get_cluster_info(GetClusterInfoRequest())
        system = await _client(cluster, cluster.address, cluster.token("system"), cert="clients/system", server_name="localhost")
        truth = await system.workflow_service.get_cluster_info(GetClusterInfoRequest())
        assert info.cluster_id == truth.cluster_id and info.server_version == truth.server_version
        assert info.history_shard_count == truth.history_shard_count == 4

    _run(check())


def test_a_system_user_gets_the_frontends_own_list_through_the_gate(gate):
    cluster, address, _ = gate
    names = _run(_list(cluster, address, cluster.token("system")))
    assert {"default", "other", "temporal-system"} <= set(names)


def test_the_list_holds_only_namespaces_the_frontend_lets_the_caller_describe(gate):
    cluster, address, _ = gate
    bearer = token(cluster, ["default:read", "other:worker", f"ghost-{uuid.uuid4().hex[:8]}:read"])
    # other:worker is below read (the frontend refuses DescribeNamespace); the ghost does not exist.
    assert _run(_list(cluster, address, bearer)) == ["default"]


def test_the_gate_gives_a_reader_no_right_the_token_lacks(gate):
    cluster, address, _ = gate

    async def check():
        client = await _client(cluster, address, cluster.token("reader"))
        service = client.workflow_service
        assert await call_status(service.describe_namespace(DescribeNamespaceRequest(namespace="other"))) in REFUSED
        assert await call_status(service.describe_namespace(DescribeNamespaceRequest(namespace="default"))) is None
        start = StartWorkflowExecutionRequest(
            namespace="default", workflow_id=f"gate-{uuid.uuid4()}", workflow_type=WorkflowType(name="Greeting"),
            task_queue=TaskQueue(name="gate", kind=TaskQueueKind.TASK_QUEUE_KIND_NORMAL), request_id=str(uuid.uuid4()),
        )
        assert await call_status(service.start_workflow_execution(start)) == RPCStatusCode.PERMISSION_DENIED

    _run(check())


@pytest.mark.parametrize("case", ["no token", "expired", "unknown kid", "forged with known kid", "wrong audience",
                                  "alg none", "tampered payload", "worker only", "garbage"])
def test_invalid_or_insufficient_tokens_get_a_refusal_not_a_gate_answer(gate, case):
    cluster, address, _ = gate
    wanted = ["default:read"]
    bearer = {
        "no token": lambda: None,
        "expired": lambda: token(cluster, wanted, now=utcnow() - timedelta(hours=2)),
        "unknown kid": lambda: token(cluster, wanted, key=SigningKey.generate()),
        "forged with known kid": lambda: forged_with_known_kid(cluster, wanted),
        "wrong audience": lambda: token(cluster, wanted, audience="elsewhere"),
        "alg none": lambda: alg_none(cluster, wanted),
        "tampered payload": lambda: _tampered(cluster.token("reader"), ["default:read", "other:read"]),
        "worker only": lambda: token(cluster, ["default:worker"]),
        "garbage": lambda: "not-a-jwt",
    }[case]()

    async def check():
        client = await _client(cluster, address, None)  # the frontend refuses even GetSystemInfo to a bad token
        client.api_key = bearer
        assert await call_status(client.workflow_service.list_namespaces(ListNamespacesRequest())) in REFUSED
        assert await call_status(client.workflow_service.get_cluster_info(GetClusterInfoRequest())) in REFUSED

    _run(check())


def _raw_call(cluster, address: str, method: str, cert: str = "ui/client", server_name: str = "ui-gate") -> grpc.StatusCode:
    with grpc.secure_channel(address, _credentials(cluster, cert), options=[("grpc.ssl_target_name_override", server_name)]) as channel:
        try:
            channel.unary_unary(method)(b"", timeout=10, metadata=(("authorization", f"Bearer {cluster.token('system')}"),))
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def released_server_methods() -> dict[str, list[str]]:
    """Every gRPC method of the Temporal server's own services (admin, history, matching, test) as
    the release the tests run (tests/support/binaries.py temporal_bin_dir: 1.32.2, compose's pin) generates
    them: its Go stubs (api/*/v1/service_grpc.pb.go, `<Service>_<Method>_FullMethodName`) in the
    module cache the build filled. Names from the protocol, never typed by hand. (The frontend's
    own gRPC reflection would list them too, but with the authorizer on it refuses reflection even
    to a system admin: "Request unauthorized.")"""
    version = temporal_bin_dir().name.removeprefix("temporal-")
    cache = subprocess.run(["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=True).stdout.strip()
    stubs = sorted((Path(cache) / f"go.temporal.io/server@v{version}" / "api").glob("*/v1/service_grpc.pb.go"))
    assert stubs, f"no generated service stubs of temporal v{version} under {cache}"
    methods: dict[str, list[str]] = {}
    for stub in stubs:
        for full_name in re.findall(r'_FullMethodName\s*=\s*"(/[^"]+)"', stub.read_text()):
            service, method = full_name[1:].rsplit("/", 1)
            methods.setdefault(service, []).append(method)
    return methods


def _credentials(cluster, cert: str) -> grpc.ChannelCredentials:
    bundle = cluster.bundle
    return grpc.ssl_channel_credentials((bundle / "trust/ca.pem").read_bytes(), (bundle / f"{cert}.key").read_bytes(),
                                        (bundle / f"{cert}.pem").read_bytes())


def test_only_the_ui_services_are_forwarded(gate):
    cluster, address, _ = gate
    served = released_server_methods()
    admin = "temporal.server.api.adminservice.v1.AdminService"
    assert admin in served, sorted(served)
    # The frontend serves the admin API (a system token passes its check): the name is the real one.
    assert _raw_call(cluster, cluster.address, f"/{admin}/DescribeCluster", cert="clients/system",
                     server_name="localhost") == grpc.StatusCode.OK
    for service, methods in served.items():
        for method in methods if service == admin else methods[:3]:
            assert _raw_call(cluster, address, f"/{service}/{method}") == grpc.StatusCode.UNIMPLEMENTED, (service, method)
    assert _raw_call(cluster, address, "/grpc.health.v1.Health/Check") == grpc.StatusCode.OK
    assert _raw_call(cluster, address, f"/{FORWARDED_SERVICES[0]}/GetSystemInfo") == grpc.StatusCode.OK


@pytest.mark.parametrize("cert,admitted", [("ui/client", True), ("clients/reader", True), ("server/internode", False),
                                           ("server/frontend", False), ("jwks/server", False), ("registrar/system", True),
                                           (None, False)])
def test_callers_need_a_client_domain_certificate(gate, cert, admitted):
    cluster, address, _ = gate
    host, port = address.split(":")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cluster.bundle / "trust/ca.pem")
    context.set_alpn_protocols(["h2"])
    if cert:
        context.load_cert_chain(cluster.bundle / f"{cert}.pem", cluster.bundle / f"{cert}.key")
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="ui-gate") as tls:
                tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                data = tls.recv(64)
        except (ssl.SSLError, ConnectionResetError):
            data = b""
    # An HTTP/2 SETTINGS frame back means the gate took the certificate.
    assert (len(data) >= 4 and data[3] == 4) is admitted, (cert, data)


def test_a_missing_cluster_record_refuses_instead_of_inventing_one(gate):
    cluster, address, info = gate
    saved = info.read_bytes()
    info.unlink()
    try:
        status = _run(call_status(_client_call_cluster_info(cluster, address)))
        assert status == RPCStatusCode.PERMISSION_DENIED  # the frontend's own answer
    finally:
        info.write_bytes(saved)
    assert _run(call_status(_client_call_cluster_info(cluster, address))) is None


async def _client_call_cluster_info(cluster, address):
    client = await _client(cluster, address, cluster.token("reader"))
    return await client.workflow_service.get_cluster_info(GetClusterInfoRequest())


class _Forwarder:
    """A TCP relay from a local port to the frontend, started on demand: the frontend appearing
    where the gate expects it (the TLS session runs end to end through it)."""

    def __init__(self, port: int, target: str):
        self.port, (self.host, target_port) = port, target.rsplit(":", 1)
        self.target_port = int(target_port)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self.loop).result(10)

    async def _serve(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def _relay(self, reader, writer) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, self.target_port)

        async def pipe(src, dst):
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)

    def stop(self) -> None:
        async def close():
            self.server.close()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


def test_the_gate_reaches_a_frontend_that_starts_after_it_within_seconds(gate):
    """compose starts the gate before the server, and make rotate / upgrade restart the server
    under it. gRPC's default reconnect backoff would by now wait up to ~17 s between attempts
    (and grows to 120 s); the gate's is capped at 2 s."""
    cluster, _, info = gate
    upstream_port = free_port()
    process, address = start_gate(cluster, f"127.0.0.1:{upstream_port}", info, "ui-gate-late-upstream.log")
    forwarder = _Forwarder(upstream_port, cluster.address)
    try:
        refused_until = time.monotonic() + 35  # long enough for the default backoff to reach ~17 s
        while time.monotonic() < refused_until:
            assert _raw_call(cluster, address, "/grpc.health.v1.Health/Check") == grpc.StatusCode.UNAVAILABLE
            time.sleep(1)
        forwarder.start()
        up_at = time.monotonic()
        wait_until(lambda: _raw_call(cluster, address, "/grpc.health.v1.Health/Check") == grpc.StatusCode.OK,
                   30, "the health check through the gate", interval=0.1)
        assert time.monotonic() - up_at < 4.0
    finally:
        process.terminate()
        process.wait(10)
        if forwarder.thread.is_alive():
            forwarder.stop()


def _connections_held(address: str, bundle: Path, cert: str, source: str, count: int) -> list:
    """`count` TLS + HTTP/2 connections from `source` with `cert` that never call; those the gate
    admitted stay open (a refused one fails its handshake)."""
    host, port = address.split(":")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(bundle / "trust/ca.pem")
    context.load_cert_chain(bundle / f"{cert}.pem", bundle / f"{cert}.key")
    context.set_alpn_protocols(["h2"])
    held = []
    for _ in range(count):
        try:
            raw = socket.create_connection((host, int(port)), 5, source_address=(source, 0))
            tls = context.wrap_socket(raw, server_hostname="ui-gate")
            tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            held.append(tls)
        except OSError:
            pass
    return held


def test_one_address_holding_every_connection_it_can_leaves_the_ui_room_to_reconnect(gate):
    """A client-domain certificate holder on another address opens 100 connections and holds them;
    the Web UI (a new connection, as after a restart) still gets its answer. gRPC alone would have
    given the first 32 to the holder and refused the UI's."""
    cluster, address, _ = gate
    held = _connections_held(address, cluster.bundle, "clients/reader", "127.0.0.2", 100)
    try:
        assert 1 <= len(held) <= 8, len(held)  # the gate's PEER_CONNECTIONS

        async def ui_reconnects() -> float:
            started = time.monotonic()
            client = await _client(cluster, address, cluster.token("reader"))
            await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace="default"))
            return time.monotonic() - started

        assert _run(ui_reconnects()) < 5.0
    finally:
        for tls in held:
            tls.close()
