"""Hypothesis against the codec's body parser and its HTTP handlers: whatever the body, the
answer is a 2xx or a 4xx (never a 5xx), the log holds no traceback and no internal error, and
nothing under the bundle directory is written."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from temporalio.api.common.v1 import Payload

from bootstrap.cli import main
from bootstrap.core.codec import encrypt
from bootstrap.servers.codec import Policy, make_server
from bootstrap.servers.events import Refusal
from bootstrap.servers.wire import parse_items, parse_payloads
from tests.support.codec import bundle_keys, codec_config
from tests.support.routes import METHODS, decoded_path, raw_paths, send, with_examples

CONFIG = codec_config("codec-fuzz")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30)
base64_text = st.binary(max_size=40).flatmap(lambda raw: st.sampled_from([
    base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode().rstrip("=")]))
field_values = base64_text | st.text(max_size=20) | json_values
metadata_keys = st.sampled_from(["encoding", "encryption-key-id", "encryption-namespace"]) | st.text(max_size=10)
payloads = st.fixed_dictionaries({}, optional={
    "metadata": st.dictionaries(metadata_keys, field_values, max_size=4) | json_values,
    "data": field_values})
documents = st.fixed_dictionaries({}, optional={"payloads": st.lists(payloads, max_size=4) | json_values,
                                                "other": json_values})
bodies = (documents.map(lambda doc: json.dumps(doc).encode())
          | json_values.map(lambda doc: json.dumps(doc).encode())
          | st.binary(max_size=200))


@settings(max_examples=600)
@given(bodies)
def test_parsing_any_body_is_items_or_a_4xx(body):
    for parse in (parse_items, parse_payloads):
        try:
            items = parse(body)
        except Refusal as refusal:
            assert refusal.status in (400, 413), refusal.status
            continue
        if parse is parse_items:
            for item in items:
                try:
                    item.check()
                except Refusal as refusal:
                    assert refusal.status == 400
                    continue
                assert json.loads(item.json()) is not None


# --------------------------------------------------------------------------- the handlers


@contextlib.contextmanager
def codec_server(root, policy: Policy):
    """A codec server on a fresh bundle under `root`, plain HTTP: (bundle directory, server)."""
    config, out = root / "bundle.yaml", root / "out"
    config.write_text(CONFIG)
    assert main(["init", "--config", str(config), "--out", str(out), "-q"]) == 0
    served = make_server("127.0.0.1", 0, keys_path=out / "codec-keys/keys.json", jwks_path=out / "jwks/jwks.json",
                         policy=policy, audit=True)
    threading.Thread(target=served.serve_forever, daemon=True).start()
    try:
        yield out, served
    finally:
        served.shutdown()
        served.server_close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with codec_server(tmp_path_factory.mktemp("codec-fuzz"), Policy("temporal")) as (out, served):
        keys = bundle_keys(out)
        sealed = encrypt(Payload(metadata={"encoding": b"json/plain"}, data=b'"fuzz secret"'), keys, "orders")
        yield out, served.server_address[1], sealed


def snapshot(out):
    return sorted((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in out.rglob("*"))


def sealed_json(sealed: Payload) -> dict:
    return {"metadata": {k: base64.b64encode(v).decode() for k, v in sealed.metadata.items()},
            "data": base64.b64encode(sealed.data).decode()}


# capfd is read (and emptied) once per example: sharing it across examples is the point.
@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=bodies | st.lists(st.just("sealed"), max_size=3), path=st.sampled_from(["/decode", "/encode", "/orders/decode"]),
       role=st.sampled_from(["system", "mixed", "lowest", "worker", None]),
       namespace=st.sampled_from(["orders", "payments", "no-keys", "bad name", None]))
def test_any_request_is_a_2xx_or_a_4xx_and_writes_nothing(server, capfd, body, path, role, namespace):
    out, port, sealed = server
    if isinstance(body, list):  # a batch of real ciphertexts, to reach the decryption path
        body = json.dumps({"payloads": [sealed_json(sealed) for _ in body]}).encode()
    before = snapshot(out)
    headers = {"Content-Type": "application/json"}
    if role:
        headers["Authorization"] = "Bearer " + (out / "tokens" / f"{role}.jwt").read_text().strip()
    if namespace:
        headers["X-Namespace"] = namespace
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
    finally:
        conn.close()
    assert 200 <= response.status < 300 or 400 <= response.status < 500, response.status
    log = capfd.readouterr().err
    assert "Traceback" not in log and '"internal-error"' not in log, log
    assert snapshot(out) == before


# --------------------------------------------------------------------------- routing

# The routing the codec server has always had, written down once: only the last path segment
# (decoded, trailing slashes ignored) selects encode or decode, so `https://codec:8888/{ns}/decode`
# works; OPTIONS anywhere is a CORS preflight; GET /healthz; everything else a JSON 404.
UI = "https://ui.example.com"
EDGES = [("POST", "/healthz"), ("HEAD", "/healthz"), ("GET", "/healthz/"), ("GET", "/healthz?x=1"), ("POST", "/orders/decode"),
         ("POST", "/decode/"), ("POST", "//encode"), ("POST", "/a%2Fdecode"), ("PUT", "/decode%2F"), ("HEAD", "/decode"),
         ("POST", "/a%252Fdecode"), ("POST", "/decodex"), ("OPTIONS", "/nowhere"), ("OPTIONS", "*"), ("POST", "/")]


def expected_route(method: str, raw_path: str) -> str:
    path = decoded_path(raw_path)
    action = path.rstrip("/").rsplit("/", 1)[-1] in ("encode", "decode")
    if method == "OPTIONS":
        return "preflight"
    if method == "GET" and path == "/healthz":
        return "health"
    if action:
        return "codec" if method == "POST" else "not allowed"
    return "not found"


@pytest.fixture(scope="module")
def routed(tmp_path_factory):
    with codec_server(tmp_path_factory.mktemp("codec-routes"), Policy("temporal", ui_origins=(UI,))) as (_, served):
        yield served.server_address[1]


@settings(max_examples=500, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=METHODS, path=raw_paths(["decode", "encode", "healthz", "orders", "DECODE"]),
       origin=st.sampled_from([None, UI, "https://evil.example"]), body=st.sampled_from([None, b"", b"{}", b"x" * 300]))
@with_examples(EDGES, origin=None, body=b"{}")
def test_any_path_and_method_is_routed_as_it_always_was(routed, capfd, method, path, origin, body):
    headers = {"Origin": origin} if origin else {}
    response, data = send(routed, method, path, headers, body)
    route, log = expected_route(method, path), capfd.readouterr().err
    assert "Traceback" not in log and '"internal-error"' not in log, log
    assert response.getheader("Vary") == "Origin"
    assert response.getheader("Access-Control-Allow-Origin") == (origin if origin == UI else None)
    assert response.getheader("Cache-Control") == (None if route == "preflight" and origin == UI else "no-store")
    doc = json.loads(data) if method != "HEAD" and response.status != 204 else None
    unread = bool(body)  # nothing here reads a body: every request is refused before that
    if route == "preflight":
        assert (response.status, doc) == ((204, None) if origin == UI else (403, {"error": "origin not allowed"}))
        assert response.getheader("Access-Control-Allow-Methods") == ("POST, OPTIONS" if origin == UI else None)
        return
    if route == "health":
        assert (response.status, doc) == (200, {"status": "ok"})
        return
    events = [json.loads(line) for line in log.splitlines() if '"service":"codec"' in line]
    if route == "codec":
        expected = (403, {"error": "origin not allowed"}) if origin not in (None, UI) else (401, doc)
        assert (response.status, doc) == expected and doc["error"]
        assert [(e["status"], e["outcome"]) for e in events] == [(response.status, "refused")]
        assert unread <= response.will_close
        return
    assert events == []
    if route == "not allowed":
        assert (response.status, response.getheader("Allow")) == (405, "POST, OPTIONS")
        assert doc in (None, {"error": "use POST"})
    else:
        assert response.status == 404 and doc in (None, {"error": "not found"})
    assert response.will_close == unread
