"""The key service on the codec server (workers fetch their namespaces' rings), on a bundle made
by `init`, without a Temporal server: a worker with mutual TLS and its own token gets only the rings of the namespaces it may
write to; every refusal is one audit line without key bytes; the SDK mode caches, re-fetches on
rotation, outlives a key service outage for its cache lifetime only, and a new worker without
the service fails with one clear line."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import ssl
import threading
import time
from datetime import timedelta

import pytest
from temporalio.api.common.v1 import Payload

from bootstrap.cli import main
from bootstrap.core.codec import CodecError, KeyringFile, data_converter, decrypt, encrypt
from bootstrap.core.codec_keys import KeySet
from bootstrap.core.pki import utcnow
from bootstrap.core.tokens import SigningKey, mint_token
from bootstrap.key_client import KeyServiceError, KeyServiceKeys
from bootstrap.servers.codec import Policy, make_server
from tests.support.codec import codec_config, single_kek_bundle
from tests.support.ports import free_port
from tests.support.waits import wait_until

CONFIG = codec_config("key-service", roles=("system", "worker", "client"))
PLAIN = Payload(metadata={"encoding": b"json/plain"}, data=b'"card 4111"')


class Served:
    def __init__(self, out, server):
        self.out, self.server, self.port = out, server, server.server_address[1]
        self.url = f"https://localhost:{self.port}/v1/keys"
        self.stopped = False

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.server.shutdown()
            self.server.server_close()

    def token(self, *permissions: str, sub_role: str = "t") -> str:
        kid = (self.out / "private/jwt/active").read_text().strip()
        key = SigningKey.from_pem((self.out / f"private/jwt/{kid}.key").read_bytes())
        return mint_token(key, role=sub_role, permissions=list(permissions), issuer="temporal-bundle",
                          audience="temporal", lifetime=timedelta(hours=1)).encoded

    def get(self, namespace: str, token: str | None, client_cert: bool = True) -> tuple[int, dict]:
        ctx = ssl.create_default_context(cafile=str(self.out / "trust/ca.pem"))
        if client_cert:
            ctx.load_cert_chain(self.out / "clients/worker.pem", self.out / "clients/worker.key")
        conn = http.client.HTTPSConnection("localhost", self.port, context=ctx, timeout=10)
        conn.request("GET", f"/v1/keys/{namespace}", headers={"Authorization": f"Bearer {token}"} if token else {})
        response = conn.getresponse()
        status, body = response.status, response.read()
        conn.close()
        return status, json.loads(body)

    def client(self, token: str, **options) -> KeyServiceKeys:
        token_file = self.out.parent / f"token-{abs(hash(token))}.jwt"
        token_file.write_text(token)
        return KeyServiceKeys(self.url, cafile=self.out / "trust/ca.pem", cert=self.out / "clients/worker.pem",
                              key=self.out / "clients/worker.key", token_file=token_file, **options)


@pytest.fixture(params=["single-kek", "per-namespace"])
def served(request, tmp_path):
    config, out = tmp_path / "bundle.yaml", tmp_path / "out"
    config.write_text(CONFIG)
    assert main(["init", "--config", str(config), "--out", str(out), "-q"]) == 0  # per-namespace custody
    if request.param == "single-kek":
        single_kek_bundle(out)  # a bundle made before per-namespace custody, not migrated
    server = make_server("127.0.0.1", 0, keys_path=out / "codec-keys/keys.json", jwks_path=out / "jwks/jwks.json",
                         policy=Policy("temporal", "admin"), cert=out / "codec/server.pem", key=out / "codec/server.key")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    served = Served(out, server)
    yield served
    served.stop()


def all_keys(out) -> KeySet:
    return KeyringFile(out / "codec-keys/keys.json").current()


def audit_lines(capfd) -> list[dict]:
    return [json.loads(line) for line in capfd.readouterr().err.splitlines() if '"service":"key-service"' in line]


def test_a_writer_gets_its_own_namespace_ring_only(served, capfd):
    status, doc = served.get("orders", served.token("orders:write"))
    assert status == 200, doc
    ring = all_keys(served.out).rings["orders"]
    assert doc["active"] == ring.active and {k: base64.b64decode(v) for k, v in doc["keys"].items()} == ring.keys
    [line] = audit_lines(capfd)
    assert line["outcome"] == "served" and line["namespace"] == "orders" and line["peer"] == "temporal-bundle:worker"
    assert not any(base64.b64encode(k).decode() in json.dumps(line) for k in ring.keys.values())


@pytest.mark.parametrize("permissions,namespace,status", [
    (["orders:write"], "payments", 403),             # another tenant's keys
    (["temporal-system:read"], "orders", 403),        # reads history, is no custodian
    (["temporal-system:admin"], "payments", 403),     # unless the policy says so: it does not by default
    (["orders:read"], "orders", 403),                 # read is not enough to encrypt
    (["orders:worker"], "orders", 403),
    (["orders:write"], "nope", 403),
    (["orders:write"], "..", 400),
])
def test_refusals_are_audited_without_key_bytes(served, capfd, permissions, namespace, status):
    capfd.readouterr()
    got, doc = served.get(namespace, served.token(*permissions))
    assert got == status and "keys" not in doc, doc
    [line] = audit_lines(capfd)
    assert line["outcome"] == "refused" and line["status"] == status and line["principal"] == "temporal-bundle:t"
    keys = all_keys(served.out)
    text = json.dumps(line)
    for ring in keys.rings.values():
        assert not any(base64.b64encode(k).decode() in text for k in ring.keys.values())


def test_no_client_certificate_or_no_token_is_refused(served, capfd):
    assert served.get("orders", served.token("orders:write"), client_cert=False)[0] == 401
    assert served.get("orders", None)[0] == 401
    assert served.get("orders", "not-a-jwt")[0] == 401
    assert [line["status"] for line in audit_lines(capfd)] == [401, 401, 401]


def test_sdk_mode_encodes_and_decodes_with_the_fetched_ring_and_holds_no_kek(served):
    keys = served.client(served.token("orders:write"))
    converter = data_converter(keys, namespace="orders")
    codec = converter.payload_codec
    [sealed] = asyncio.run(codec.encode([PLAIN]))
    assert decrypt(sealed, all_keys(served.out)) == PLAIN  # the codec server reads it
    assert asyncio.run(codec.decode([sealed])) == [PLAIN]
    assert keys.fetches == 1, "cached"
    assert keys.known() == sorted(all_keys(served.out).rings["orders"].keys)


def test_a_new_worker_without_permission_fails_at_construction_with_one_line(served):
    keys = served.client(served.token("orders:write"))
    with pytest.raises(KeyServiceError) as caught:
        data_converter(keys, namespace="payments")
    message = str(caught.value)
    assert "\n" not in message and "refused the data keys of namespace 'payments' (403" in message


def test_orders_worker_cannot_open_payments_history(served):
    """Its token fetches no payments ring; and an orders data key replayed as payments' opens nothing."""
    payments_payload = encrypt(PLAIN, all_keys(served.out), "payments")
    keys = served.client(served.token("orders:write"))
    with pytest.raises(CodecError, match="refused the data keys of namespace 'payments'"):
        decrypt(payments_payload, keys)
    orders = keys.ring("orders")
    replay = KeySet({"payments": orders, "orders": orders})
    with pytest.raises(CodecError, match="unknown key id"):
        decrypt(payments_payload, replay)
    # An orders payload relabelled as payments, with the orders key under payments' name: the
    # namespace in the associated data refuses it.
    relabelled = encrypt(PLAIN, replay, "orders")
    relabelled.metadata["encryption-namespace"] = b"payments"
    with pytest.raises(CodecError, match="failed authentication"):
        decrypt(relabelled, replay)


def test_rotation_is_fetched_on_an_unknown_key_id(served):
    now = [0.0]
    keys = served.client(served.token("orders:write"), clock=lambda: now[0])
    old = keys.ring("orders")
    assert main(["rotate", "--config", str(served.out.parent / "bundle.yaml"), "--out", str(served.out),
                 "--kind", "codec-key", "--namespace", "orders", "-q"]) == 0
    time.sleep(KeyringFile.check_every + 0.05)  # the codec server sees a rotation within check_every
    rotated = all_keys(served.out)
    fresh = encrypt(PLAIN, rotated, "orders")
    assert fresh.metadata["encryption-key-id"].decode() not in old.keys
    now[0] = 5.0  # well inside the ttl: only the unknown id makes it ask again
    assert decrypt(fresh, keys) == PLAIN and keys.fetches == 2
    assert keys.encrypting("orders")[0] == rotated.rings["orders"].active


def test_key_service_down_cached_ring_serves_until_its_lifetime_then_one_clear_line(served):
    now = [0.0]
    keys = served.client(served.token("orders:write"), clock=lambda: now[0], lifetime=120)
    sealed = encrypt(PLAIN, keys, "orders")
    served.stop()
    keys.close()
    now[0] = 90.0  # past the ttl (60 s), inside the lifetime: the cached ring keeps the worker running
    assert decrypt(sealed, keys) == PLAIN and encrypt(PLAIN, keys, "orders")
    now[0] = 121.0
    with pytest.raises(CodecError) as caught:
        encrypt(PLAIN, keys, "orders")
    assert "unreachable" in str(caught.value) and "no cached data keys for namespace 'orders'" in str(caught.value)
    # A new worker: fails at construction, one line.
    fresh = served.client(served.token("orders:write"), timeout=2)
    with pytest.raises(CodecError) as caught:
        data_converter(fresh, namespace="orders")
    assert "\n" not in str(caught.value) and "key service https://localhost" in str(caught.value)


def test_the_web_ui_path_needs_no_client_certificate(served):
    """The codec's own endpoints still answer a browser, which sends no certificate."""
    ctx = ssl.create_default_context(cafile=str(served.out / "trust/ca.pem"))
    conn = http.client.HTTPSConnection("localhost", served.port, context=ctx, timeout=10)
    conn.request("GET", "/healthz")
    assert conn.getresponse().status == 200


def serve_codec(tmp_path, extra: str = "") -> tuple[Served, "subprocess.Popen"]:
    """`serve-codec` as compose runs it, on a bundle whose bundle.yaml ends with `extra`."""
    import subprocess
    import sys

    config, out, port = tmp_path / "bundle.yaml", tmp_path / "out", free_port()
    config.write_text(CONFIG + extra)
    assert main(["init", "--config", str(config), "--out", str(out), "-q"]) == 0
    process = subprocess.Popen([sys.executable, "-m", "bootstrap", "serve-codec", "--config", str(config), "--out", str(out),
                                "--host", "127.0.0.1", "--port", str(port)], stderr=subprocess.DEVNULL)
    served = Served.__new__(Served)
    served.out, served.port = out, port

    def healthy() -> bool:
        try:
            ctx = ssl.create_default_context(cafile=str(out / "trust/ca.pem"))
            conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=2)
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200
        except OSError:
            return False

    wait_until(healthy, 30, "serve-codec health")
    return served, process


@pytest.mark.parametrize("setting,system_status", [("", 403), ("codec: {system_may_fetch_keys: false}\n", 403),
                                                   ("codec: {system_may_fetch_keys: true}\n", 200)])
def test_whether_temporal_system_may_fetch_keys_is_the_bundle_yaml_setting(tmp_path, setting, system_status):
    served, process = serve_codec(tmp_path, setting)
    try:
        assert served.get("orders", served.token("temporal-system:admin"))[0] == system_status
        assert served.get("orders", served.token("temporal-system:read"))[0] == 403, "read is never enough"
        assert served.get("orders", served.token("orders:write"))[0] == 200
    finally:
        process.terminate()
        process.wait(10)


@pytest.mark.parametrize("value", ['"yes"', "1", "[true]", '"false"'])  # (null means the default, as everywhere)
def test_a_bad_system_may_fetch_keys_is_one_error_line_at_load(tmp_path, capsys, value):
    config, out = tmp_path / "bundle.yaml", tmp_path / "out"
    config.write_text(CONFIG + f"codec: {{system_may_fetch_keys: {value}}}\n")
    capsys.readouterr()
    assert main(["init", "--config", str(config), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0] == f"error: {config}: codec: system_may_fetch_keys must be true or false", err
    assert not out.exists(), "nothing written"
