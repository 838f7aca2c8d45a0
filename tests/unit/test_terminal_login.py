"""Terminal login's pieces without a network: Dex's public client for the CLI, PKCE (S256), state
and nonce, the authorization URL, the loopback callback's parser (fuzzed), the Temporal CLI profile
(TOML) written into a file that may hold the user's own profiles, and the session's expiry rule.

The flow itself, against the real Dex, the real temporal-server and the real temporal CLI, is in
tests/server/test_terminal_login.py."""

from __future__ import annotations

import base64
import hashlib
import sys
import urllib.parse
from datetime import timedelta

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from bootstrap.core.cli_login import (CALLBACK_PATH, CliProfile, authorization_url, is_stale, merge_profile,
                                      new_pkce, new_secret, parse_callback, redirect_uri, remove_profile)
from bootstrap.errors import BundleError
from bootstrap.ops.oidc import CLI_CLIENT_ID, dex_config_path

NAMESPACES = [{"name": "default"}, {"name": "orders"}]


# --------------------------------------------------------------------------- Dex's clients


def test_dex_has_a_public_cli_client_the_ui_client_trusts(tmp_path, cli):
    config = tmp_path / "bundle.yaml"
    config.write_text(yaml.safe_dump({"namespaces": NAMESPACES}))
    assert cli("init", "--config", config, "--out", tmp_path / "out").code == 0
    from bootstrap.store import Layout
    dex = yaml.safe_load(dex_config_path(Layout((tmp_path / "out").resolve())).read_text())
    clients = {c["id"]: c for c in dex["staticClients"]}
    # Public, no secret, no redirect URI listed: Dex v2.45.1 then admits http://127.0.0.1:<any port>/...
    # (RFC 8252 loopback) and nothing else but its out-of-band page (validateRedirectURI).
    assert clients[CLI_CLIENT_ID] == {"id": CLI_CLIENT_ID, "name": "Temporal CLI (temporal-bundle login)", "public": True}
    # The server checks one audience, the UI client's id (jwt.audience): the CLI may ask Dex for it
    # (scope audience:server:client_id:temporal) because the UI client names it a trusted peer.
    assert clients["temporal"]["trustedPeers"] == [CLI_CLIENT_ID]
    assert "trustedPeers" not in clients["grafana"]
    assert dex["oauth2"]["grantTypes"] == ["authorization_code", "refresh_token"]  # still no device flow


# --------------------------------------------------------------------------- PKCE, state, URL


def test_pkce_is_s256_of_a_fresh_verifier():
    one, two = new_pkce(), new_pkce()
    assert one.verifier != two.verifier
    assert 43 <= len(one.verifier) <= 128 and set(one.verifier) <= set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
    digest = base64.urlsafe_b64encode(hashlib.sha256(one.verifier.encode()).digest()).rstrip(b"=").decode()
    assert one.challenge == digest and one.method == "S256"
    assert len({new_secret() for _ in range(50)}) == 50 and len(new_secret()) >= 43


def test_authorization_url_carries_everything_and_keeps_the_endpoints_query():
    pkce = new_pkce()
    url = authorization_url("https://idp.example/auth?tenant=a", client_id="temporal-cli",
                            redirect="http://127.0.0.1:4242/callback", scopes=("openid", "groups"),
                            state="S", nonce="N", challenge=pkce.challenge)
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query))
    assert parts.netloc == "idp.example" and parts.path == "/auth"
    assert query == {"tenant": "a", "response_type": "code", "client_id": "temporal-cli",
                     "redirect_uri": "http://127.0.0.1:4242/callback", "scope": "openid groups", "state": "S",
                     "nonce": "N", "code_challenge": pkce.challenge, "code_challenge_method": "S256"}
    assert redirect_uri(4242) == "http://127.0.0.1:4242/callback"
    ldap = authorization_url("https://dex/auth", client_id="c", redirect="r", scopes=("openid",), state="S", nonce="N",
                             challenge="C", connector="ldap")
    assert dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(ldap).query))["connector_id"] == "ldap"


# --------------------------------------------------------------------------- the callback


def test_the_callback_gives_the_code_for_the_right_state():
    assert parse_callback(f"{CALLBACK_PATH}?code=abc&state=S1", "S1") == "abc"


@pytest.mark.parametrize("target, message", [
    ("/callback?code=abc&state=S2", "state does not match"),
    ("/callback?code=abc", "state does not match"),
    ("/callback?state=S1", "no code"),
    ("/callback?code=&state=S1", "no code"),
    ("/callback?error=access_denied&error_description=User+said+no&state=S1", "access_denied: User said no"),
    ("/callback?error=invalid_scope&state=S2", "state does not match"),  # a forged error is not believed either
    ("/callback?code=a&code=b&state=S1", "repeats"),
    ("/elsewhere?code=abc&state=S1", "not the login callback"),
    ("/callback?code=abc&state=S1&error=x", "x"),
    ("/callback?error=%1b%5b31mred&state=S1", "\\x1b[31mred"),
    ("/callback?code=caf%C3%A9&state=S1", "not an authorization code"),
])
def test_a_bad_callback_is_one_error(target, message):
    with pytest.raises(BundleError) as caught:
        parse_callback(target, "S1")
    assert message in str(caught.value)
    assert "\n" not in str(caught.value) and "\x1b" not in str(caught.value)


@settings(max_examples=400)
@given(st.text(max_size=300), st.text(min_size=1, max_size=40))
def test_the_callback_parser_never_fails_another_way(target, state):
    try:
        code = parse_callback(target, state)
    except BundleError as exc:
        text = str(exc)
        assert text and "\n" not in text and "\r" not in text and len(text) < 400
        return
    # Accepted only with exactly our state and one non-empty code, on the callback path.
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(target).query, keep_blank_values=True))
    assert urllib.parse.urlsplit(target).path == CALLBACK_PATH and query.get("state") == state and code
    assert "error" not in query


@settings(max_examples=200)
@given(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e), max_size=80), st.text(max_size=80),
       st.text(min_size=1, max_size=40))
def test_a_callback_with_our_state_and_a_code_always_parses(code, junk, state):
    target = f"{CALLBACK_PATH}?" + urllib.parse.urlencode({"code": code, "state": state, "x": junk})
    if code:
        assert parse_callback(target, state) == code
    else:
        with pytest.raises(BundleError):
            parse_callback(target, state)


# --------------------------------------------------------------------------- the profile


PROFILE = CliProfile(name="bundle", address="localhost:7233", api_key="eyJ.a.b", ca_path="/b/trust/ca.pem",
                     cert_path="/b/clients/client.pem", key_path="/b/clients/client.key", server_name="temporal",
                     namespace="orders")


def parsed(text: str) -> dict:
    tomllib = pytest.importorskip("tomllib") if sys.version_info < (3, 11) else __import__("tomllib")
    return tomllib.loads(text)


def test_the_profile_is_the_clis_toml():
    doc = parsed(merge_profile(None, PROFILE))
    assert doc == {"profile": {"bundle": {
        "address": "localhost:7233", "namespace": "orders", "api_key": "eyJ.a.b",
        "tls": {"client_cert_path": "/b/clients/client.pem", "client_key_path": "/b/clients/client.key",
                "server_ca_cert_path": "/b/trust/ca.pem", "server_name": "temporal"}}}}


def test_other_profiles_and_comments_are_kept_and_ours_replaced():
    mine = '# my settings\n[profile.default]\naddress = "prod:7233"\n\n[profile.default.tls]\nserver_name = "x"\n'
    first = merge_profile(mine, PROFILE)
    assert first.startswith(mine)
    second = merge_profile(first, CliProfile(**{**PROFILE.__dict__, "api_key": "eyJ.new.token"}))
    assert second.count("[profile.bundle]") == 1 and "eyJ.a.b" not in second
    doc = parsed(second)
    assert doc["profile"]["default"] == {"address": "prod:7233", "tls": {"server_name": "x"}}
    assert doc["profile"]["bundle"]["api_key"] == "eyJ.new.token"
    assert remove_profile(second, "bundle") == mine
    assert remove_profile(merge_profile(None, PROFILE), "bundle") is None  # nothing else: the file goes


@pytest.mark.parametrize("existing", [
    '[profile.bundle]\naddress = "theirs:7233"\n',
    '[profile."bundle".tls]\nserver_name = "theirs"\n',
    'profile.bundle.address = "theirs:7233"\n',
])
def test_a_profile_we_did_not_write_is_never_replaced(existing):
    with pytest.raises(BundleError, match="not written by temporal-bundle login"):
        merge_profile(existing, PROFILE)


@pytest.mark.parametrize("existing", [
    '[profile.bundle]\naddress = "theirs:7233"\n',
    '[ profile . "bundle" . tls ]\nserver_name = "theirs"\n',
    'profile.bundle.address = "theirs:7233"\n',
])
def test_without_a_toml_reader_a_foreign_profile_is_still_refused(existing, monkeypatch):
    """Python 3.10 has no tomllib: the table headers and dotted keys naming the profile refuse it."""
    import bootstrap.core.cli_login as cli_login

    monkeypatch.setattr(cli_login, "tomllib", None)
    with pytest.raises(BundleError, match="not written by temporal-bundle login"):
        merge_profile(existing, PROFILE)
    assert "[profile.bundle]" in merge_profile('[profile.bundles]\naddress = "x:1"\n', PROFILE)


def test_a_file_that_is_not_toml_is_refused():
    with pytest.raises(BundleError, match="not valid TOML"):
        merge_profile("[profile.default\naddress = 1\n", PROFILE)


@pytest.mark.parametrize("field, value", [("name", "has space"), ("name", "a.b"), ("name", ""),
                                          ("address", "host:7233\n[profile.x]"), ("api_key", "tok\"en")])
def test_values_cannot_break_out_of_the_profile(field, value):
    with pytest.raises(BundleError):
        merge_profile(None, CliProfile(**{**PROFILE.__dict__, field: value}))


def test_a_token_is_stale_within_the_window():
    assert is_stale(expires_at=1000, now=950, window=timedelta(seconds=60))
    assert not is_stale(expires_at=1000, now=900, window=timedelta(seconds=60))
    assert is_stale(expires_at=1000, now=2000, window=timedelta(0))


# --------------------------------------------------------------------------- options, the listener


def test_defaults_come_from_the_bundle(tmp_path, cli):
    from bootstrap.core.config import load_config
    from bootstrap.ops.login import Options, resolve

    config_path = tmp_path / "bundle.yaml"
    config_path.write_text(yaml.safe_dump({"namespaces": NAMESPACES}))
    assert cli("init", "--config", config_path, "--out", tmp_path / "out").code == 0
    out = (tmp_path / "out").resolve()
    target, profile = resolve(Options(profile="p"), load_config(config_path), out)
    assert target.issuer == "https://auth.localhost:5556/dex" and target.client_id == CLI_CLIENT_ID
    assert target.audience == "temporal" and target.cafiles == (str(out / "trust" / "ca.pem"),)
    assert target.scopes == ("openid", "profile", "email", "groups", "offline_access",
                             "audience:server:client_id:temporal")
    assert (profile.address, profile.server_name) == ("localhost:7233", "temporal")
    assert profile.cert_path == str(out / "clients" / "client.pem") and profile.key_path == str(out / "clients" / "client.key")
    with pytest.raises(BundleError, match="client certificate .* not found"):
        resolve(Options(profile="p", cert_role="nobody"), load_config(config_path), out)
    with pytest.raises(BundleError, match="no issuer"):
        resolve(Options(profile="p"), None, out)


def test_with_upstream_connectors_the_dex_token_goes_to_the_exchange(tmp_path, cli):
    """oidc.connectors: the frontend no longer trusts Dex's keys, so login exchanges by default."""
    from bootstrap.core.config import load_config
    from bootstrap.ops.login import Options, resolve

    secret = tmp_path / "bind"
    secret.write_text("pw\n")
    connector = {"type": "github", "id": "github", "config": {"clientID": "x", "clientSecret_file": str(secret),
                                                               "redirectURI": "https://auth.localhost:5556/dex/callback"}}
    config_path = tmp_path / "bundle.yaml"
    config_path.write_text(yaml.safe_dump({"namespaces": NAMESPACES, "oidc": {"connectors": [connector]}}))
    assert cli("init", "--config", config_path, "--out", tmp_path / "out").code == 0
    out = (tmp_path / "out").resolve()
    target, _ = resolve(Options(profile="p"), load_config(config_path), out)
    assert target.exchange_url == "https://localhost:8444/token"
    given, _ = resolve(Options(profile="p", exchange_url="https://x.example/token"), load_config(config_path), out)
    assert given.exchange_url == "https://x.example/token"
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump({"namespaces": NAMESPACES}))
    assert resolve(Options(profile="p"), load_config(plain), out)[0].exchange_url == ""


def test_a_company_idp_gets_its_own_scopes(tmp_path):
    from bootstrap.core.config import parse_config
    from bootstrap.ops.login import Options, resolve

    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    config = parse_config({"namespaces": NAMESPACES, "oidc": {"enabled": False, "external": {
        "issuer": "https://login.example.com/acme", "jwks_uri": "https://login.example.com/acme/keys",
        "client_id": "temporal-ui", "client_secret_file": str(secret), "scopes": ["openid", "email"]}}})
    pem = tmp_path / "x.pem"
    pem.write_text("x")
    target, _ = resolve(Options(profile="p", client_id="cli-app", tls_ca=str(pem), tls_cert=str(pem), tls_key=str(pem),
                                ca_files=(str(pem),)), config, None)
    assert (target.issuer, target.audience, target.scopes) == (
        "https://login.example.com/acme", "temporal-ui", ("openid", "email", "offline_access"))


def test_the_listener_serves_one_request_then_closes():
    import threading
    import urllib.error
    import urllib.request

    from bootstrap.ops.login_callback import CallbackListener

    listener = CallbackListener("S1")
    url = redirect_uri(listener.port)
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    result = {}
    waiter = threading.Thread(target=lambda: result.update(code=listener.wait(10)))
    waiter.start()
    with direct.open(f"{url}?code=abc&state=S1", timeout=5) as response:
        assert response.status == 200 and b"return to the terminal" in response.read()
    waiter.join(10)
    assert result == {"code": "abc"}
    with pytest.raises(urllib.error.URLError):
        direct.open(f"{url}?code=abc&state=S1", timeout=5)


def test_a_port_in_use_is_one_error():
    import socket

    from bootstrap.ops.login_callback import CallbackListener

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(BundleError, match="cannot listen on 127.0.0.1:"):
            CallbackListener("S", taken.getsockname()[1])


def test_no_callback_in_time_is_one_error():
    from bootstrap.ops.login_callback import CallbackListener

    with pytest.raises(BundleError, match="no login callback reached http://127.0.0.1:.* within 0.3 s"):
        CallbackListener("S").wait(0.3)


def test_a_dot_localhost_issuer_is_reached_on_loopback_with_its_name_verified(tmp_path):
    """The bundle's default issuer is https://auth.localhost:5556/dex: browsers resolve *.localhost to
    loopback (RFC 6761), this machine's resolver does not; login connects to 127.0.0.1 and still
    checks the certificate for auth.localhost."""
    import datetime as dt
    import json as json_module
    import ssl
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from bootstrap.ops.login_issuer import request_json, tls_context

    def self_signed(name: str, stem: str):
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
                .not_valid_after(now + dt.timedelta(hours=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
                .sign(key, hashes.SHA256()))
        (tmp_path / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (tmp_path / f"{stem}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                                 serialization.PrivateFormat.PKCS8,
                                                                 serialization.NoEncryption()))
        return tmp_path / f"{stem}.pem", tmp_path / f"{stem}.key"

    class Reply(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = json_module.dumps({"host": self.headers["Host"]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    cert, key = self_signed("auth.localhost", "right")
    server = HTTPServer(("127.0.0.1", 0), Reply)
    serving = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    serving.load_cert_chain(cert, key)
    server.socket = serving.wrap_socket(server.socket, server_side=True)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        status, doc = request_json(f"https://auth.localhost:{port}/x", tls_context((cert,)))
        assert (status, doc) == (200, {"host": f"auth.localhost:{port}"})
        other, _ = self_signed("other.localhost", "wrong")
        with pytest.raises(BundleError, match="cannot reach"):  # the name is still verified
            request_json(f"https://auth.localhost:{port}/x", tls_context((other,)))
    finally:
        server.shutdown()
