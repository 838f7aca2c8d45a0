"""Payload encryption against the real server: history holds only ciphertext, and the codec server
decrypts it only for tokens whose role grants the namespace.

The codec server runs in-process on 127.0.0.1 with the bundle's own certificate, data keys and
JWKS; one test also runs it as `python -m bootstrap serve-codec`, and one reads the history through
it with the real `temporal` CLI (Go's remote codec client) the way an operator would."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from datetime import timedelta

import pytest
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.worker import Worker

from bootstrap.client import connect
from bootstrap.core.codec import ENCODING, KEY_ID_HEADER, NAMESPACE_HEADER, data_converter, decrypt
from bootstrap.core.codec_keys import Keyring, KeySet
from bootstrap.core.config import load_config
from bootstrap.core.pki import utcnow
from bootstrap.core.tokens import SigningKey
from tests.support.binaries import run_cli
from tests.support.codec import bundle_keys, in_process_codec_server
from tests.support.forged_tokens import alg_none, forged_with_known_kid, token
from tests.support.ports import free_port
from tests.support.waits import wait_until
from tests.support.workflows import GreetingWorkflow, greet

SECRET = "card 4111-1111-1111-1111"


# --------------------------------------------------------------------------- helpers


def keyset(cluster) -> KeySet:
    return bundle_keys(cluster.bundle)


def keyring(cluster, namespace="default") -> Keyring:
    return keyset(cluster).rings[namespace]


async def _connect(cluster, role, converter=None, namespace="default"):
    kwargs = {"data_converter": converter} if converter else {}
    return await connect(cluster.address, bundle_dir=cluster.bundle, role=role, namespace=namespace,
                         server_name="localhost", **kwargs)


async def _start(starter, arg, queue):
    for attempt in range(40):  # a just-registered namespace reaches the frontend cache within ~10s
        try:
            return await starter.start_workflow(GreetingWorkflow.run, arg, id=f"codec-{uuid.uuid4()}", task_queue=queue)
        except Exception as exc:  # noqa: BLE001
            if "not found" not in str(exc).lower() or attempt == 39:
                raise
            await asyncio.sleep(0.5)


async def history_payloads(cluster, workflow_id, namespace="default") -> list[Payload]:
    """Workflow and activity inputs and results, read WITHOUT the codec: what the server stores."""
    plain = await _connect(cluster, "client", namespace=namespace)
    history = await plain.get_workflow_handle(workflow_id).fetch_history()
    found = []
    for event in history.events:
        for attributes, field in (
            ("workflow_execution_started_event_attributes", "input"),
            ("activity_task_scheduled_event_attributes", "input"),
            ("activity_task_completed_event_attributes", "result"),
            ("workflow_execution_completed_event_attributes", "result"),
        ):
            if event.HasField(attributes):
                found += list(getattr(getattr(event, attributes), field).payloads)
    assert len(found) == 4, f"expected 4 payloads in the history, found {len(found)}"
    return found


def body(payloads) -> bytes:
    """What the Web UI and the CLI post: proto3 JSON of Payloads (bytes fields base64)."""
    return json_format.MessageToJson(Payloads(payloads=list(payloads))).encode()


def parse(data: bytes) -> list[Payload]:
    return list(json_format.Parse(data, Payloads()).payloads)


def request(cluster, url, method="POST", data=None, headers=None):
    ctx = ssl.create_default_context(cafile=str(cluster.bundle / "trust" / "ca.pem"))
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def decode(cluster, server, payloads, bearer=None, namespace="default", path="/decode"):
    headers = {"Content-Type": "application/json", "X-Namespace": namespace}
    if bearer is not None:
        headers["Authorization"] = f"Bearer {bearer}"
    return request(cluster, server + path, data=body(payloads), headers=headers)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def codec_server(sqlite_cluster):
    with in_process_codec_server(sqlite_cluster) as url:
        yield url


@pytest.fixture(scope="module")
def encrypted_run(sqlite_cluster):
    """One workflow run by a worker and a starter that both use the codec."""
    cluster = sqlite_cluster
    keys = cluster.bundle / "codec-keys" / "keys.json"
    key_id = keyring(cluster).active

    async def scenario():
        worker_client = await _connect(cluster, "worker", data_converter(keys))
        starter = await _connect(cluster, "client", data_converter(keys))
        queue = f"codec-{uuid.uuid4()}"
        async with Worker(worker_client, task_queue=queue, workflows=[GreetingWorkflow], activities=[greet]):
            handle = await _start(starter, SECRET, queue)
            result = await asyncio.wait_for(handle.result(), 60)
        return handle.id, result, await history_payloads(cluster, handle.id)

    workflow_id, result, payloads = asyncio.run(scenario())
    assert result == f"hello, {SECRET}", "the codec must be transparent to the application"
    return workflow_id, key_id, payloads


# --------------------------------------------------------------------------- ciphertext at rest


def test_history_holds_only_ciphertext(encrypted_run):
    _, key_id, payloads = encrypted_run
    for payload in payloads:
        assert payload.metadata["encoding"] == ENCODING
        assert payload.metadata[KEY_ID_HEADER] == key_id.encode()
        # Bound to its namespace by the SDK's serialization context: no namespace= was passed.
        assert payload.metadata[NAMESPACE_HEADER] == b"default"
        assert set(payload.metadata) == {"encoding", KEY_ID_HEADER, NAMESPACE_HEADER}
        assert b"4111" not in payload.data and b"json/plain" not in payload.data


# --------------------------------------------------------------------------- who may read it


@pytest.mark.parametrize("role", ["nsadmin", "system"])
def test_admin_tokens_get_plaintext(sqlite_cluster, codec_server, encrypted_run, role):
    status, headers, data = decode(sqlite_cluster, codec_server, encrypted_run[2], sqlite_cluster.token(role))
    assert status == 200, data
    assert headers["Cache-Control"] == "no-store"
    decoded = parse(data)
    assert [p.metadata["encoding"] for p in decoded] == [b"json/plain"] * 4
    assert [json.loads(p.data) for p in decoded] == [SECRET, SECRET, f"hello, {SECRET}", f"hello, {SECRET}"]


def test_namespace_in_the_path_works_like_the_header(sqlite_cluster, codec_server, encrypted_run):
    """The CLI's `--codec-endpoint https://codec/{namespace}` form."""
    headers = {"Authorization": f"Bearer {sqlite_cluster.token('nsadmin')}"}
    status, _, data = request(sqlite_cluster, codec_server + "/default/decode", data=body(encrypted_run[2]), headers=headers)
    assert status == 200 and b"4111" in b"".join(p.data for p in parse(data))


@pytest.mark.parametrize("who", ["reader", "writer"])
def test_valid_tokens_without_the_grant_get_ciphertext_back(sqlite_cluster, codec_server, encrypted_run, who):
    cluster = sqlite_cluster
    bearer = {"reader": cluster.token("reader"), "writer": cluster.token("client")}[who]
    payloads = encrypted_run[2]
    status, _, data = decode(cluster, codec_server, payloads, bearer, namespace="default")
    assert status == 200, data
    assert parse(data) == payloads


@pytest.mark.parametrize("who", ["admin-of-other-namespace", "admin-asking-for-other"])
def test_tokens_without_any_role_on_the_namespace_get_403(sqlite_cluster, codec_server, encrypted_run, who):
    """A caller with no role at all on the request's namespace is refused before its body
    is read (these got 200 and their ciphertext back before)."""
    cluster = sqlite_cluster
    bearer, namespace = {
        "admin-of-other-namespace": (token(cluster, ["other:admin"]), "default"),
        # A default admin claiming the payloads belong to `other`.
        "admin-asking-for-other": (cluster.token("nsadmin"), "other"),
    }[who]
    status, _, data = decode(cluster, codec_server, encrypted_run[2], bearer, namespace=namespace)
    assert status == 403 and b"4111" not in data


def test_read_and_worker_flags_do_not_add_up_to_admin(sqlite_cluster, codec_server, encrypted_run):
    bearer = token(sqlite_cluster, ["default:read", "default:write", "default:worker", "temporal-system:write"])
    status, _, data = decode(sqlite_cluster, codec_server, encrypted_run[2], bearer)
    assert status == 200 and parse(data) == encrypted_run[2]


@pytest.mark.parametrize(
    "case",
    ["no token", "expired", "unknown kid", "forged with known kid", "wrong audience", "alg none", "garbage", "basic auth"],
)
def test_invalid_tokens_get_401(sqlite_cluster, codec_server, encrypted_run, case):
    cluster = sqlite_cluster
    bearer = {
        "no token": lambda: None,
        "expired": lambda: token(cluster, ["temporal-system:admin"], now=utcnow() - timedelta(hours=2)),
        "unknown kid": lambda: token(cluster, ["temporal-system:admin"], key=SigningKey.generate()),
        "forged with known kid": lambda: forged_with_known_kid(cluster, ["temporal-system:admin"]),
        "wrong audience": lambda: token(cluster, ["temporal-system:admin"], audience="elsewhere"),
        "alg none": lambda: alg_none(cluster, ["temporal-system:admin"]),
        "garbage": lambda: "not-a-jwt",
        "basic auth": lambda: None,
    }[case]()
    headers = {"Content-Type": "application/json", "X-Namespace": "default"}
    if bearer is not None:
        headers["Authorization"] = f"Bearer {bearer}"
    if case == "basic auth":
        headers["Authorization"] = "Basic YWRtaW46YWRtaW4="
    status, response_headers, data = request(cluster, codec_server + "/decode", data=body(encrypted_run[2]), headers=headers)
    assert status == 401, data
    assert response_headers["WWW-Authenticate"].startswith("Bearer")
    assert b"4111" not in data


def test_encode_needs_write_and_encrypts_with_the_active_key(sqlite_cluster, codec_server):
    cluster = sqlite_cluster
    plain = [Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(SECRET).encode())]
    headers = {"Content-Type": "application/json", "X-Namespace": "default"}
    status, _, _ = request(cluster, codec_server + "/encode", data=body(plain),
                           headers={**headers, "Authorization": f"Bearer {cluster.token('reader')}"})
    assert status == 403
    status, _, _ = request(cluster, codec_server + "/encode", data=body(plain), headers=headers)
    assert status == 401
    status, _, data = request(cluster, codec_server + "/encode", data=body(plain),
                              headers={**headers, "Authorization": f"Bearer {cluster.token('client')}"})
    assert status == 200, data
    [sealed] = parse(data)
    keys = keyring(cluster)
    assert sealed.metadata[KEY_ID_HEADER] == keys.active.encode() and b"4111" not in sealed.data
    assert sealed.metadata[NAMESPACE_HEADER] == b"default"
    assert decrypt(sealed, keys) == plain[0]


def test_health_and_unknown_paths(sqlite_cluster, codec_server):
    assert request(sqlite_cluster, codec_server + "/healthz", method="GET")[0] == 200
    assert request(sqlite_cluster, codec_server + "/decode", method="GET")[0] == 405
    assert request(sqlite_cluster, codec_server + "/jwks.json", method="GET")[0] == 404
    assert request(sqlite_cluster, codec_server + "/other", data=b"{}")[0] == 404


# --------------------------------------------------------------------------- CORS for the Web UI


def test_cors_preflight_from_the_ui_origin_passes(sqlite_cluster, codec_server):
    origin = load_config(sqlite_cluster.config_path).codec.ui_origins[0]
    status, headers, _ = request(sqlite_cluster, codec_server + "/decode", method="OPTIONS", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,x-namespace"})
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == origin
    assert headers["Access-Control-Allow-Credentials"] == "true"
    assert {m.strip() for m in headers["Access-Control-Allow-Methods"].split(",")} >= {"POST", "OPTIONS"}
    allowed = {h.strip().lower() for h in headers["Access-Control-Allow-Headers"].split(",")}
    assert allowed >= {"authorization", "content-type", "x-namespace"}
    assert "Origin" in headers["Vary"]


def test_cors_actual_request_from_the_ui_origin_is_readable(sqlite_cluster, codec_server, encrypted_run):
    origin = load_config(sqlite_cluster.config_path).codec.ui_origins[0]
    headers = {"Origin": origin, "X-Namespace": "default", "Content-Type": "application/json",
               "Authorization": f"Bearer {sqlite_cluster.token('nsadmin')}"}
    status, response_headers, _ = request(sqlite_cluster, codec_server + "/decode", data=body(encrypted_run[2]), headers=headers)
    assert status == 200 and response_headers["Access-Control-Allow-Origin"] == origin


@pytest.mark.parametrize("origin", ["https://evil.example", "http://localhost:9999", "null"])
def test_cors_from_another_origin_fails(sqlite_cluster, codec_server, encrypted_run, origin):
    status, headers, _ = request(sqlite_cluster, codec_server + "/decode", method="OPTIONS", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"})
    assert status == 403
    assert "Access-Control-Allow-Origin" not in headers
    # Even with a valid admin token, a page on another origin gets no plaintext.
    status, headers, data = request(sqlite_cluster, codec_server + "/decode", data=body(encrypted_run[2]), headers={
        "Origin": origin, "X-Namespace": "default", "Authorization": f"Bearer {sqlite_cluster.token('nsadmin')}"})
    assert status == 403 and "Access-Control-Allow-Origin" not in headers and b"4111" not in data


# --------------------------------------------------------------------------- as operators run it


def _payload_text(cli_json: str) -> str:
    """Every payload `data` in `temporal workflow show -o json` output, base64-decoded."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("data"), str) and "metadata" in node:
                found.append(base64.b64decode(node["data"]).decode(errors="replace"))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(cli_json))
    assert found, "no payloads in the CLI output"
    return "\n".join(found)


def test_temporal_cli_shows_plaintext_only_for_admins(sqlite_cluster, codec_server, encrypted_run):
    """The real `temporal` CLI, through its remote codec client (Go SDK), against our server."""
    cluster, workflow_id = sqlite_cluster, encrypted_run[0]
    env = {**os.environ, "SSL_CERT_FILE": str(cluster.bundle / "trust" / "ca.pem")}

    def show(role):
        argv = [*cluster.cli_base("client"), "workflow", "show", "-n", "default", "-w", workflow_id, "-o", "json",
                "--codec-endpoint", codec_server, "--codec-auth", f"Bearer {cluster.token(role)}"]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)

    admin = show("nsadmin")
    assert admin.returncode == 0, admin.stderr
    assert SECRET in _payload_text(admin.stdout)
    reader = show("reader")
    assert reader.returncode == 0, reader.stderr
    assert "4111" not in _payload_text(reader.stdout) and "4111" not in reader.stdout


def test_serve_codec_command(sqlite_cluster, encrypted_run):
    """`python -m bootstrap serve-codec` as the compose service runs it: keys from the JWKS URL
    (so the container needs no jwks/ directory, which holds the JWKS server's private key)."""
    cluster = sqlite_cluster
    port = free_port()
    argv = [sys.executable, "-m", "bootstrap", "serve-codec", "--config", str(cluster.config_path),
            "--out", str(cluster.bundle), "--host", "127.0.0.1", "--port", str(port),
            "--jwks-url", f"https://localhost:{cluster.jwks_port}/jwks.json"]
    log = cluster.workdir / "codec-server.log"
    process = subprocess.Popen(argv, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"https://localhost:{port}"
        wait_until(lambda: request(cluster, url + "/healthz", method="GET")[0] == 200, 20, "serve-codec health")
        status, _, data = decode(cluster, url, encrypted_run[2], cluster.token("nsadmin"))
        assert status == 200 and json.loads(parse(data)[0].data) == SECRET
        assert decode(cluster, url, encrypted_run[2], None)[0] == 401
    finally:
        process.terminate()
        process.wait(10)
    audit = log.read_text()
    assert f"JWKS: https://localhost:{cluster.jwks_port}/jwks.json" in audit
    events = [json.loads(line) for line in audit.splitlines() if line.startswith("{")]
    assert {"principal": "temporal-bundle:nsadmin", "outcome": "decrypted", "decrypted": 4} in [
        {k: e.get(k) for k in ("principal", "outcome", "decrypted")} for e in events]
    assert any(e.get("status") == 401 and e.get("outcome") == "refused" for e in events)
    assert cluster.token("nsadmin") not in audit, "tokens must never be logged"


# --------------------------------------------------------------------------- one namespace's keys per namespace


def test_a_payload_replayed_into_another_namespace_is_refused_even_for_a_system_admin(sqlite_cluster, codec_server):
    """Payloads are bound to their namespace: a workflow runs in `other` with the codec; its
    encrypted input is then replayed as the input of a workflow in `default`. The codec server decrypts it in `other`'s history
    for other's admin, and refuses it in `default`'s history even to temporal-system:admin."""
    from temporalio.common import RawValue

    cluster = sqlite_cluster
    keys_path = cluster.bundle / "codec-keys" / "keys.json"

    async def scenario():
        worker_client = await _connect(cluster, "worker", data_converter(keys_path), namespace="other")
        starter = await _connect(cluster, "client", data_converter(keys_path), namespace="other")
        queue = f"codec-ns-{uuid.uuid4()}"
        async with Worker(worker_client, task_queue=queue, workflows=[GreetingWorkflow], activities=[greet]):
            handle = await _start(starter, SECRET, queue)
            assert await asyncio.wait_for(handle.result(), 60) == f"hello, {SECRET}"
        stolen = (await history_payloads(cluster, handle.id, "other"))[0]
        plain = await _connect(cluster, "client")  # no codec: the raw payload goes in as it is
        replay = await plain.start_workflow("GreetingWorkflow", RawValue(stolen), id=f"replay-{uuid.uuid4()}",
                                            task_queue=f"nobody-{uuid.uuid4()}")
        history = await plain.get_workflow_handle(replay.id).fetch_history()
        [replayed] = history.events[0].workflow_execution_started_event_attributes.input.payloads
        return stolen, replayed

    stolen, replayed = asyncio.run(scenario())
    assert replayed == stolen and stolen.metadata[NAMESPACE_HEADER] == b"other"
    other_ring, default_ring = keyring(cluster, "other"), keyring(cluster, "default")
    assert stolen.metadata[KEY_ID_HEADER].decode() in other_ring.keys
    assert stolen.metadata[KEY_ID_HEADER].decode() not in default_ring.keys

    # A's reader sees A's payloads decrypted.
    for bearer in (token(cluster, ["other:admin"]), cluster.token("system")):
        status, _, data = decode(cluster, codec_server, [stolen], bearer, namespace="other")
        assert status == 200 and json.loads(parse(data)[0].data) == SECRET
    # Replayed into default's history: refused to the default admin and to the system admin alike.
    for bearer in (cluster.token("nsadmin"), cluster.token("system")):
        status, _, data = decode(cluster, codec_server, [replayed], bearer, namespace="default")
        assert status == 200 and parse(data) == [replayed] and b"4111" not in data
    # Relabelled as a default payload it does not open either: default's ring lacks its key.
    relabelled = Payload(metadata={**replayed.metadata, NAMESPACE_HEADER: b"default"}, data=replayed.data)
    status, _, data = decode(cluster, codec_server, [relabelled], cluster.token("system"), namespace="default")
    assert status == 400 and b"unknown key id" in data and b"4111" not in data


# --------------------------------------------------------------------------- key rotation


def test_codec_key_rotation_keeps_old_history_readable(sqlite_cluster, codec_server, encrypted_run):
    """Worker and starter keep running across `rotate --kind codec-key`: they pick up the new
    key from the file, new payloads carry its id, and payloads written before still decode."""
    cluster = sqlite_cluster
    keys_path = cluster.bundle / "codec-keys" / "keys.json"
    old_id = encrypted_run[1]

    async def scenario():
        worker_client = await _connect(cluster, "worker", data_converter(keys_path))
        starter = await _connect(cluster, "client", data_converter(keys_path))
        queue = f"codec-rot-{uuid.uuid4()}"
        async with Worker(worker_client, task_queue=queue, workflows=[GreetingWorkflow], activities=[greet]):
            before = await _start(starter, "before", queue)
            assert await asyncio.wait_for(before.result(), 60) == "hello, before"
            rotated = run_cli("rotate", "--config", str(cluster.config_path), "--out", str(cluster.bundle),
                              "--kind", "codec-key")
            after = await _start(starter, "after", queue)
            assert await asyncio.wait_for(after.result(), 60) == "hello, after"
        return rotated.stdout, before.id, after.id

    output, before_id, after_id = asyncio.run(scenario())
    new = keyring(cluster)
    assert f"default: {new.active}" in output
    assert old_id in new.keys and new.active != old_id

    before_payloads = asyncio.run(history_payloads(cluster, before_id))
    after_payloads = asyncio.run(history_payloads(cluster, after_id))
    assert {p.metadata[KEY_ID_HEADER] for p in after_payloads} == {new.active.encode()}
    assert new.active.encode() not in {p.metadata[KEY_ID_HEADER] for p in before_payloads}

    admin = cluster.token("nsadmin")
    for payloads, word in ((encrypted_run[2], SECRET), (before_payloads, "before"), (after_payloads, "after")):
        status, _, data = decode(cluster, codec_server, payloads, admin)
        assert status == 200, data
        assert json.loads(parse(data)[0].data) == word
