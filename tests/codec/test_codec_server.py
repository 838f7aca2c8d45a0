"""The codec server on a bundle made by `init`, without a Temporal server: it follows signing-key
and data-key rotations without a restart, and refuses malformed requests."""

from __future__ import annotations

import json
import socket
import ssl
import textwrap
import time
import threading
import urllib.error
import urllib.request
from datetime import timedelta

import pytest
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads

from bootstrap.cli import main
from bootstrap.core.codec import KEY_ID_HEADER, KeyringFile, encrypt
from bootstrap.core.codec_keys import Keyring
from bootstrap.servers.codec import Policy, make_server
from bootstrap.core.pki import utcnow
from bootstrap.core.tokens import SigningKey, mint_token
from tests.support.codec import bundle_keys

CONFIG = textwrap.dedent("""\
    namespaces: [{name: default}]
    jwt: {refresh_interval: 1s}
    roles:
      system: {permissions: ["temporal-system:admin"]}
      worker: {permissions: ["default:write"]}
      client: {permissions: ["default:write"]}
    codec: {ui_origins: ["https://ui.example.com"]}
    persistence: {driver: sqlite, sqlite_path: /tmp/unused-codec-server.db}
    """)
PLAIN = Payload(metadata={"encoding": b"json/plain"}, data=b'"secret"')


@pytest.fixture
def served(tmp_path):
    config, out = tmp_path / "bundle.yaml", tmp_path / "out"
    config.write_text(CONFIG)
    assert main(["init", "--config", str(config), "--out", str(out), "-q"]) == 0
    server = make_server(
        "127.0.0.1", 0, keys_path=out / "codec-keys/keys.json", jwks_path=out / "jwks/jwks.json",
        policy=Policy("temporal", "admin", ("https://ui.example.com",)),
        cert=out / "codec/server.pem", key=out / "codec/server.key", audit=False,
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield config, out, f"https://localhost:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def post(out, url, data: bytes, headers: dict):
    ctx = ssl.create_default_context(cafile=str(out / "trust/ca.pem"))
    req = urllib.request.Request(url, data=data, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def body(*payloads) -> bytes:
    return json_format.MessageToJson(Payloads(payloads=list(payloads))).encode()


def admin_token(out, kid=None) -> str:
    kid = kid or (out / "private/jwt/active").read_text().strip()
    key = SigningKey.from_pem((out / f"private/jwt/{kid}.key").read_bytes())
    return mint_token(key, role="t", permissions=["default:admin"], issuer="temporal-bundle", audience="temporal",
                      lifetime=timedelta(hours=1)).encoded


def headers(out, kid=None) -> dict:
    return {"Authorization": f"Bearer {admin_token(out, kid)}", "X-Namespace": "default",
            "Content-Type": "application/json"}


def test_follows_a_signing_key_rotation(served):
    config, out, url = served
    old = set((out / "private/jwt").glob("*.key"))
    assert main(["rotate", "--config", str(config), "--out", str(out), "--kind", "signing-key", "-q"]) == 0
    [new] = set((out / "private/jwt").glob("*.key")) - old
    status, data = post(out, url + "/encode", body(PLAIN), headers(out, kid=new.stem))
    assert status == 200, data


def test_follows_a_data_key_rotation(served):
    config, out, url = served
    status, data = post(out, url + "/encode", body(PLAIN), headers(out))
    [before] = json_format.Parse(data, Payloads()).payloads
    assert main(["rotate", "--config", str(config), "--out", str(out), "--kind", "codec-key", "-q"]) == 0
    time.sleep(KeyringFile.check_every + 0.05)  # per-namespace rings are re-checked every check_every
    keys = bundle_keys(out)
    active = keys.rings["default"].active
    status, data = post(out, url + "/encode", body(PLAIN), headers(out))
    [after] = json_format.Parse(data, Payloads()).payloads
    assert after.metadata[KEY_ID_HEADER] == active.encode() != before.metadata[KEY_ID_HEADER]
    status, data = post(out, url + "/decode", body(before, after), headers(out))
    assert status == 200
    assert list(json_format.Parse(data, Payloads()).payloads) == [PLAIN, PLAIN]


def test_unknown_data_key_is_a_clear_400(served):
    _, out, url = served
    foreign = Keyring.generate(utcnow())
    status, data = post(out, url + "/decode", body(encrypt(PLAIN, foreign, "default")), headers(out))
    assert status == 400 and "unknown key id" in json.loads(data)["error"]


@pytest.mark.parametrize(
    "data,drop,status,message",
    [
        (b"not json", None, 400, "not proto3 JSON"),
        (b'{"payloads": [{"metadata": {"encoding": 5}}]}', None, 400, "not proto3 JSON"),
        (b'{"payloads": {"data": ""}}', None, 400, "not proto3 JSON"),
        (body(PLAIN), "X-Namespace", 400, "X-Namespace"),
    ],
)
def test_malformed_requests(served, data, drop, status, message):
    _, out, url = served
    sent = headers(out)
    if drop:
        del sent[drop]
    got, response = post(out, url + "/decode", data, sent)
    assert got == status and message in json.loads(response)["error"]


def test_wire_format_accepts_what_the_ui_sends(served):
    """proto3 JSON: every bytes field base64, standard or URL-safe alphabet, padding optional;
    unknown fields ignored; an empty list is fine."""
    _, out, url = served
    doc = {"payloads": [{"metadata": {"encoding": "anNvbi9wbGFpbg"}, "data": "InNlY3JldCI", "externalPayloads": []}]}
    status, data = post(out, url + "/encode", json.dumps(doc).encode(), headers(out))
    assert status == 200, data
    status, data = post(out, url + "/decode", data, headers(out))
    assert list(json_format.Parse(data, Payloads()).payloads) == [PLAIN]
    status, data = post(out, url + "/decode", b'{"payloads": []}', headers(out))
    assert status == 200 and json.loads(data) == {}


def get(out, url):
    ctx = ssl.create_default_context(cafile=str(out / "trust/ca.pem"))
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_health_and_error_bodies_name_no_paths(served, tmp_path):
    """Paths and resolver errors go to the server's log, never to the caller."""
    _, out, url = served
    assert get(out, url + "/healthz") == (200, b'{"status": "ok"}\n')
    (out / "codec-keys/keys.json").write_text("{broken")
    time.sleep(2 * KeyringFile.check_every)  # a key change is seen within check_every (0.1 s)
    status, data = get(out, url + "/healthz")
    assert status == 503 and json.loads(data)["status"] == "degraded"
    (out / "jwks/jwks.json").unlink()
    status, data = get(out, url + "/healthz")
    assert status == 503 and json.loads(data) == {"status": "unavailable"}
    status, data = post(out, url + "/decode", body(PLAIN), headers(out))
    assert status == 503 and json.loads(data) == {"error": "token keys unavailable"}
    assert str(tmp_path).encode() not in data


def test_jwks_server_health_names_no_path(tmp_path):
    from bootstrap.servers.jwks import make_server as make_jwks_server

    jwks = tmp_path / "jwks.json"
    jwks.write_text('{"keys": []}')
    server = make_jwks_server("127.0.0.1", 0, jwks, None, None)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with urllib.request.urlopen(base + "/jwks.json", timeout=10) as response:
            assert json.loads(response.read()) == {"keys": []}
        jwks.unlink()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(base + "/healthz", timeout=10)
        data = refused.value.read()
        assert refused.value.code == 503 and str(tmp_path).encode() not in data
    finally:
        server.shutdown()
        server.server_close()


def test_a_reissued_certificate_is_served_without_a_restart(served):
    config, out, url = served
    port = int(url.rsplit(":", 1)[1])

    def served_cert() -> bytes:
        ctx = ssl.create_default_context(cafile=str(out / "trust/ca.pem"))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                return tls.getpeercert(binary_form=True)

    before = served_cert()
    assert main(["rotate", "--config", str(config), "--out", str(out), "--kind", "certs", "--all", "-q"]) == 0
    on_disk = ssl.PEM_cert_to_DER_cert((out / "codec/server.pem").read_text())
    assert on_disk != before, "the rotation should have re-issued the codec server's certificate"
    assert served_cert() == on_disk
    status, _ = post(out, url + "/encode", body(PLAIN), headers(out))
    assert status == 200


def test_a_bug_is_a_500_without_internals_and_one_log_event(capfd):
    from aiohttp import web

    from bootstrap.servers.http import Limits
    from bootstrap.servers.service import Service

    async def broken(request):
        raise RuntimeError("cannot open /srv/secret/keys.json")

    app = web.Application()
    app.router.add_get("/boom", broken)
    server = Service(app, "127.0.0.1", 0, None, Limits())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(urllib.error.HTTPError) as failed:
            urllib.request.urlopen(f"http://127.0.0.1:{server.server_address[1]}/boom", timeout=10)
        assert failed.value.code == 500 and json.loads(failed.value.read()) == {"error": "internal error"}
    finally:
        server.shutdown()
        server.server_close()
    [event] = [json.loads(line) for line in capfd.readouterr().err.splitlines() if "internal-error" in line]
    assert event["error"] == "RuntimeError" and event["path"] == "/boom"
