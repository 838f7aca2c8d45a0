"""The token exchange's routes, fuzzed over paths and methods: GET /healthz, POST /token, a 405
with `Allow: POST` for any other method on /token, and the OAuth-shaped JSON 404 for everything
else (other methods on /healthz included); one audit line per POST /token; no 5xx, no traceback,
and a body left unread closes the connection."""

from __future__ import annotations

import json
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bootstrap.core.tokens import SigningKey
from bootstrap.core.workload_identity import WorkloadIdentityConfig, WorkloadIssuer
from bootstrap.servers.exchange import ExchangePolicy, make_server
from tests.support.routes import METHODS, decoded_path, raw_paths, send, with_examples

ISSUER = WorkloadIssuer("ci", "oidc", "https://issuer.example", "temporal-service")
POLICY = ExchangePolicy(WorkloadIdentityConfig(enabled=True, issuers=(ISSUER,)), ("orders",), "temporal-bundle", "temporal")
KEY = SigningKey.generate("ES256")
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
EDGES = [("POST", "/healthz"), ("HEAD", "/healthz"), ("OPTIONS", "/healthz"), ("GET", "/healthz/"), ("GET", "/token"),
         ("HEAD", "/token"), ("OPTIONS", "/token"), ("POST", "/token/"), ("POST", "/%74oken"), ("POST", "/token?x=1"),
         ("POST", "//token"), ("POST", "/a/token"), ("POST", "/token%2F"), ("OPTIONS", "*")]


def expected_route(method: str, raw_path: str) -> str:
    path = decoded_path(raw_path)
    if method == "GET" and path == "/healthz":
        return "health"
    if path == "/token":
        return "exchange" if method == "POST" else "not allowed"
    return "not found"


@pytest.fixture(scope="module")
def port(tmp_path_factory):
    key_file = tmp_path_factory.mktemp("exchange-routes") / "signing.key"
    key_file.write_bytes(KEY.private_pem())
    served = make_server("127.0.0.1", 0, policy=POLICY, key_file=key_file, cert=None, tls_key=None)
    threading.Thread(target=served.serve_forever, daemon=True).start()
    yield served.server_address[1]
    served.shutdown()
    served.server_close()


@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=METHODS, path=raw_paths(["token", "healthz", "jwks.json"]), body=st.sampled_from([None, b"", b"grant_type=x"]))
@with_examples(EDGES, body=b"grant_type=x")
def test_any_path_and_method_is_routed_as_it_always_was(port, capfd, method, path, body):
    response, data = send(port, method, path, FORM, body)
    route, log = expected_route(method, path), capfd.readouterr().err
    assert "Traceback" not in log and '"internal-error"' not in log, log
    assert (response.getheader("Cache-Control"), response.getheader("Pragma")) == ("no-store", "no-cache")
    doc = json.loads(data) if method != "HEAD" else None
    events = [json.loads(line) for line in log.splitlines() if '"service":"token-exchange"' in line]
    if route == "health":
        assert (response.status, doc) == (200, {"status": "ok", "kid": KEY.kid})
    elif route == "exchange":  # the form is read, then refused: the connection stays open
        assert response.status == 400 and doc["error"] == "unsupported_grant_type" and not response.will_close
        assert [(e["status"], e["outcome"], e["error"]) for e in events] == [(400, "refused", "unsupported_grant_type")]
        return
    elif route == "not allowed":
        assert (response.status, response.getheader("Allow")) == (405, "POST")
        assert doc in (None, {"error": "invalid_request", "error_description": "use POST"})
    else:
        assert response.status == 404 and doc in (None, {"error": "not_found"})
    assert events == []
    assert response.will_close == bool(body and route != "health")


@pytest.mark.parametrize("headers,body,status,closes", [
    ({}, b"grant_type=x", 400, True),  # the wrong Content-Type: refused before the body is read
    ({}, None, 400, False),  # the same without a body: nothing to drain
    (FORM, b"grant_type=x", 400, False),  # read, then refused
])
def test_a_refusal_closes_the_connection_only_over_an_unread_body(port, headers, body, status, closes):
    response, data = send(port, "POST", "/token", headers, body)
    assert (response.status, response.will_close) == (status, closes)
    assert json.loads(data)["error"] in ("invalid_request", "unsupported_grant_type")
