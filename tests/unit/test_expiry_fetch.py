"""check-expiry fetches its JWKS with the bundle's one HTTPS JSON fetch (servers/fetch.py) and
keeps its own contract: it trusts --ca-file alone, never the system's CAs; a JWKS up to 1 MiB is
read (the servers' key sources stop at 256 KiB); whatever the shared parser refuses, and a larger
body, is exit 3 with one error line."""

from __future__ import annotations

import http.server
import json
import threading

import pytest

from bootstrap.servers.jwks import make_server

MAX_JWKS_BYTES = 1 << 20


@pytest.fixture
def jwks_https(ec_bundle):
    root = ec_bundle.root
    server = make_server("127.0.0.1", 0, root / "jwks" / "jwks.json", root / "jwks" / "server.pem",
                         root / "jwks" / "server.key")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"https://127.0.0.1:{server.server_address[1]}/jwks.json"
    server.shutdown()
    server.server_close()


@pytest.fixture
def plain_http():
    """A plain-HTTP server answering 200 with whatever body a test puts in `bodies` for a path."""
    bodies: dict[str, bytes] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = bodies[self.path]
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", bodies
    server.shutdown()
    server.server_close()


def test_the_jwks_is_trusted_by_the_ca_file_alone_never_by_the_systems_cas(ec_bundle, jwks_https, foreign_ca,
                                                                         tmp_path, monkeypatch, cli):
    bundle_ca = ec_bundle.root / "trust" / "ca.pem"
    other_ca = tmp_path / "other-ca.pem"
    other_ca.write_bytes(foreign_ca.cert_pem())
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle_ca))  # the bundle's CA among the "system" CAs
    refused = cli("check-expiry", ec_bundle.root, "--jwks-url", jwks_https, "--ca-file", other_ca)
    assert refused.code == 3 and "CERTIFICATE_VERIFY_FAILED" in refused.err
    assert cli("check-expiry", ec_bundle.root, "--jwks-url", jwks_https, "--ca-file", bundle_ca).code == 0


def published(ec_bundle, padding: int) -> bytes:
    document = json.loads((ec_bundle.root / "jwks" / "jwks.json").read_bytes())
    return json.dumps({**document, "padding": "x" * padding}).encode()


def test_a_jwks_up_to_one_mib_is_read_and_a_larger_one_is_exit_3(ec_bundle, plain_http, cli):
    base, bodies = plain_http
    bodies["/half"] = published(ec_bundle, MAX_JWKS_BYTES // 2)
    bodies["/over"] = published(ec_bundle, MAX_JWKS_BYTES)
    assert cli("check-expiry", ec_bundle.root, "--jwks-url", f"{base}/half").code == 0
    over = cli("check-expiry", ec_bundle.root, "--jwks-url", f"{base}/over")
    assert over.code == 3 and f"larger than {MAX_JWKS_BYTES} bytes" in over.err


@pytest.mark.parametrize("body, reason", [
    (b"[" * 100_000, "not JSON"),  # nested past the parser's stack: a RecursionError, caught
    (b"<html>maintenance</html>", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'{"no": "keys"}', "did not return a JWKS document"),
])
def test_a_body_that_is_no_jwks_is_exit_3_with_one_error_line(ec_bundle, plain_http, cli, body, reason):
    base, bodies = plain_http
    bodies["/jwks.json"] = body
    run = cli("check-expiry", ec_bundle.root, "--jwks-url", f"{base}/jwks.json")
    assert run.code == 3
    assert run.err.count("\n") == 1 and run.err.startswith("error: JWKS ") and reason in run.err
