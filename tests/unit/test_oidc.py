"""Dex from bundle.yaml: strict oidc section, the rendered config, the admin's one-time password."""

from __future__ import annotations

import stat

import bcrypt
import pytest
import yaml

from bootstrap.core.config import parse_config
from bootstrap.errors import BundleError
from bootstrap.ops.oidc import admin_hash_path, admin_password_path, client_secret_path, dex_config_path, grafana_secret_path

HASH = bcrypt.hashpw(b"reader-password", bcrypt.gensalt(10)).decode()
NAMESPACES = [{"name": "default"}, {"name": "orders"}]


def oidc(**section):
    return parse_config({"namespaces": NAMESPACES, "oidc": section}).oidc


def reader(**extra):
    return {"username": "reader", "email": "reader@example.com", "groups": ["orders-readers"],
            "password_hash": HASH, **extra}


GROUPS = {"admins": ["temporal-system:admin"], "orders-readers": ["orders:read"]}


def test_groups_map_users_to_temporal_permissions():
    config = oidc(groups=GROUPS, users=[reader()])
    assert config.permissions_of(config.admin) == ("temporal-system:admin",)
    assert config.permissions_of(config.users[0]) == ("orders:read",)
    assert config.issuer == "https://auth.localhost:5556/dex"


@pytest.mark.parametrize("section, message", [
    ({"bogus": 1}, "unknown key 'bogus'"),
    ({"groups": {"admins": ["system:admin"]}}, "'temporal-system', not 'system'"),
    ({"groups": {"admins": ["nope:read"]}}, "not configured"),
    ({"groups": GROUPS, "users": [reader(password_hash="hunter2")]}, "bcrypt hash"),
    ({"groups": GROUPS, "users": [reader(groups=["ghosts"])]}, "'ghosts' is not defined"),
    ({"groups": GROUPS, "users": [reader(), reader()]}, "share the username"),
    ({"groups": {"admins": ["orders:read"]}}, "admin: needs a group granting"),
    ({"admin": {"password_hash": HASH}}, "unknown key 'password_hash'"),
    ({"connectors": [{"type": "github", "config": {"clientSecret": "s3cret"}}]}, "use clientSecret_file"),
    ({"connectors": [{"type": "github", "config": {"clientSecret_file": "rel/path"}}]}, "absolute path"),
    ({"connectors": [{"type": "saml"}]}, "type must be one of"),
    ({"enabled": "yes"}, "true or false"),
])
def test_oidc_section_is_strict(section, message):
    with pytest.raises(BundleError, match=message.replace("(", r"\(").replace("$", r"\$")):
        oidc(**section)


def _init(tmp_path, cli, section: dict):
    config = tmp_path / "bundle.yaml"
    config.write_text(yaml.safe_dump({"namespaces": NAMESPACES, "oidc": section}))
    result = cli("init", "--config", config, "--out", tmp_path / "out")
    assert result.code == 0, result.err
    return config, tmp_path / "out", result


def _layout(out):
    from bootstrap.store import Layout
    return Layout(out.resolve())


def test_dex_config_holds_only_a_hash_of_the_admin_password(tmp_path, cli):
    config, out, first = _init(tmp_path, cli, {"groups": GROUPS, "users": [reader()]})
    layout = _layout(out)
    password = admin_password_path(layout).read_text().strip()
    text = dex_config_path(layout).read_text()
    assert password not in text and password not in first.out
    dex = yaml.safe_load(text)
    users = {u["username"]: u for u in dex["staticPasswords"]}
    assert bcrypt.checkpw(password.encode(), users["admin"]["hash"].encode())
    assert not bcrypt.checkpw(b"wrong", users["admin"]["hash"].encode())
    assert users["admin"]["groups"] == ["temporal-system:admin"]
    assert users["reader"] == {"email": "reader@example.com", "username": "reader", "userID": "temporal-bundle-reader",
                               "hash": HASH, "groups": ["orders:read"]}
    secret = client_secret_path(layout).read_text().strip()
    grafana = grafana_secret_path(layout).read_text().strip()
    assert len(grafana) >= 32 and grafana != secret
    assert dex["staticClients"] == [{"id": "temporal", "name": "Temporal Web UI", "secret": secret,
                                     "redirectURIs": ["https://localhost:8080/auth/sso/callback"],
                                     "trustedPeers": ["temporal-cli"]},
                                    {"id": "grafana", "name": "Grafana", "secret": grafana,
                                     "redirectURIs": ["https://localhost:3000/login/generic_oauth"]},
                                    {"id": "temporal-cli", "name": "Temporal CLI (temporal-bundle login)", "public": True}]
    # v2.45.1: no device flow (it leaks the client secret), code flow only.
    assert dex["oauth2"]["grantTypes"] == ["authorization_code", "refresh_token"]
    assert dex["issuer"] == "https://auth.localhost:5556/dex"
    # State on the dex-data volume (docker-compose.prod.yml): a restart keeps sessions and keys.
    assert dex["storage"] == {"type": "sqlite3", "config": {"file": "/var/dex/dex.db"}}
    for path in (dex_config_path(layout), client_secret_path(layout), grafana_secret_path(layout),
                 admin_password_path(layout), admin_hash_path(layout)):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_second_init_keeps_the_admin_hash_and_client_secret(tmp_path, cli):
    config, out, _ = _init(tmp_path, cli, {})
    layout = _layout(out)
    files = (dex_config_path(layout), client_secret_path(layout), grafana_secret_path(layout))
    before = [p.read_bytes() for p in files]
    again = cli("init", "--config", config, "--out", out)
    assert again.code == 0
    assert [p.read_bytes() for p in files] == before


def test_admin_password_is_shown_once(tmp_path, cli):
    config, out, _ = _init(tmp_path, cli, {})
    layout = _layout(out)
    password = admin_password_path(layout).read_text().strip()
    shown = cli("show-admin-password", "--config", config, "--out", out)
    assert shown.code == 0 and password in shown.out and "admin@example.com" in shown.out
    assert not admin_password_path(layout).exists()
    again = cli("show-admin-password", "--config", config, "--out", out)
    assert again.code == 1 and password not in again.out + again.err
    assert again.err.startswith("error: ") and again.err.count("error:") == 1
    # A later init does not make a new password behind the operator's back.
    assert cli("init", "--config", config, "--out", out).code == 0
    assert not admin_password_path(layout).exists()


def test_connector_secrets_come_from_files(tmp_path, cli):
    secret_file = tmp_path / "github-secret"
    secret_file.write_text("gh-client-secret\n")
    connector = {"type": "github", "id": "github", "name": "GitHub",
                 "config": {"clientID": "abc", "clientSecret_file": str(secret_file),
                            "redirectURI": "https://auth.localhost:5556/dex/callback"}}
    _, out, result = _init(tmp_path, cli, {"connectors": [connector]})
    dex = yaml.safe_load(dex_config_path(_layout(out)).read_text())
    assert dex["connectors"] == [{"type": "github", "id": "github", "name": "GitHub", "config": {
        "clientID": "abc", "redirectURI": "https://auth.localhost:5556/dex/callback", "clientSecret": "gh-client-secret"}}]
    assert "gh-client-secret" not in result.out


def test_missing_connector_secret_file_fails_before_writing(tmp_path, cli):
    connector = {"type": "oidc", "config": {"clientSecret_file": str(tmp_path / "absent")}}
    config = tmp_path / "bundle.yaml"
    config.write_text(yaml.safe_dump({"oidc": {"connectors": [connector]}}))
    result = cli("init", "--config", config, "--out", tmp_path / "out")
    assert result.code == 1 and "cannot read" in result.err and result.err.count("error:") == 1
    assert not (tmp_path / "out" / "dex").exists()


def test_oidc_off_writes_no_dex_files(tmp_path, cli):
    _, out, _ = _init(tmp_path, cli, {"enabled": False})
    layout = _layout(out)
    assert not dex_config_path(layout).exists() and not client_secret_path(layout).exists()
    assert not layout.leaf("ui", "server")[0].exists()


# --------------------------------------------------------------------------- external issuer (no Dex)

EXTERNAL = {"issuer": "https://idp.example.com/realms/acme",
            "jwks_uri": "https://idp.example.com/realms/acme/protocol/openid-connect/certs",
            "client_id": "temporal-ui", "client_secret_file": "/run/secrets/temporal-ui-secret"}


def external(**overrides):
    return {"enabled": False, "external": {**EXTERNAL, **overrides}}


def test_external_issuer_replaces_dex():
    config = parse_config({"namespaces": NAMESPACES, "oidc": external(groups_claim="roles", use_id_token=True)})
    assert config.oidc.ui_login and not config.oidc.enabled
    assert config.oidc.login_issuer == EXTERNAL["issuer"] and config.oidc_jwks_url == EXTERNAL["jwks_uri"]
    assert config.oidc.permissions_claim == "roles" and config.oidc.external.use_id_token
    # The server checks one audience, and the IdP's tokens carry the client id: role tokens follow.
    assert config.jwt.audience == "temporal-ui"
    assert config.oidc.external.scopes == ("openid", "profile", "email")


@pytest.mark.parametrize("section, message", [
    (external(issuer="http://idp.example.com"), "issuer must be an https URL"),
    (external(issuer="https://idp.example.com/?x=1"), "without query or fragment"),
    (external(issuer=""), "issuer is required"),
    (external(jwks_uri="file:///etc/jwks.json"), "jwks_uri must be an https URL"),
    ({"enabled": False, "external": {k: v for k, v in EXTERNAL.items() if k != "jwks_uri"}}, "jwks_uri is required"),
    (external(client_id=""), "client_id is required"),
    ({"enabled": False, "external": {k: v for k, v in EXTERNAL.items() if k != "client_id"}}, "client_id is required"),
    (external(client_secret_file="secret.txt"), "client_secret_file must be the absolute path"),
    (external(client_secret="s3cret"), "unknown key 'client_secret'"),
    (external(ca_file="idp-ca.pem"), "ca_file must be the absolute path"),
    (external(groups_claim="sub"), "groups_claim 'sub' is not a claim name"),
    (external(scopes=["email"]), "including 'openid'"),
    (external(use_id_token="yes"), "use_id_token must be true or false"),
    (external(bogus=1), "unknown key 'bogus'"),
    ({"external": EXTERNAL}, "external needs enabled: false"),
    ({**external(), "users": [reader()]}, "users configures the embedded Dex"),
    ({**external(), "port": 5557}, "port configures the embedded Dex"),
])
def test_external_issuer_is_strict(section, message):
    with pytest.raises(BundleError, match=message.replace("(", r"\(")):
        oidc(**section)


def test_external_audience_must_be_the_client_id():
    with pytest.raises(BundleError, match="jwt.audience 'temporal' differs from oidc.external.client_id"):
        parse_config({"namespaces": NAMESPACES, "jwt": {"audience": "temporal"}, "oidc": external()})
    config = parse_config({"namespaces": NAMESPACES, "jwt": {"audience": "temporal-ui"}, "oidc": external()})
    assert config.jwt.audience == "temporal-ui"


def _external_files(tmp_path):
    from bootstrap.core.pki import CA
    secret = tmp_path / "ui-secret"
    secret.write_text("idp-client-secret-value\n")
    ca = tmp_path / "idp-ca.pem"
    ca.write_bytes(CA.create("company IdP CA").cert_pem())
    return secret, ca


def test_external_init_writes_no_dex_and_copies_the_secret_and_ca(tmp_path, cli):
    from bootstrap.core.tokens import decode_unverified
    from bootstrap.ops.oidc import issuer_ca_path
    secret, ca = _external_files(tmp_path)
    section = external(client_secret_file=str(secret), ca_file=str(ca), groups_claim="temporal-permissions")
    config, out, result = _init(tmp_path, cli, section)
    layout = _layout(out)
    assert "idp-client-secret-value" not in result.out + result.err
    assert not dex_config_path(layout).exists() and not layout.leaf("dex", "server")[0].exists()
    assert not admin_hash_path(layout).exists()
    assert layout.leaf("ui", "server")[0].exists()  # the UI still serves HTTPS itself
    assert client_secret_path(layout).read_text() == "idp-client-secret-value\n"
    assert stat.S_IMODE(client_secret_path(layout).stat().st_mode) == 0o600
    assert issuer_ca_path(layout).read_bytes() == ca.read_bytes()
    server = yaml.safe_load((out / "config" / "temporal.yaml").read_text())["global"]["authorization"]
    assert server["jwtKeyProvider"]["keySourceURIs"][1:] == [EXTERNAL["jwks_uri"]]
    assert server["permissionsClaimName"] == "temporal-permissions" and server["audience"] == "temporal-ui"
    _, claims = decode_unverified((out / "tokens" / "worker.jwt").read_text().strip())
    assert claims["temporal-permissions"] == claims["permissions"] and claims["aud"] == "temporal-ui"
    # A second init changes nothing; a new secret in the file is copied on the next one.
    assert "skipped" in cli("init", "--config", config, "--out", out).out
    secret.write_text("rotated-secret\n")
    assert cli("init", "--config", config, "--out", out).code == 0
    assert client_secret_path(layout).read_text() == "rotated-secret\n"



def test_an_external_idp_with_a_group_table_reaches_the_frontend_only_exchanged(tmp_path, cli):
    """oidc.groups next to external: the IdP's groups are names, mapped at the token exchange;
    the frontend trusts the bundle's keys only and reads the bundle's claim."""
    from bootstrap.core.tokens import decode_unverified
    secret, ca = _external_files(tmp_path)
    section = {**external(client_secret_file=str(secret), ca_file=str(ca), groups_claim="roles"),
               "groups": {"orders-team": ["orders:write"]}}
    _, out, _ = _init(tmp_path, cli, section)
    server = yaml.safe_load((out / "config" / "temporal.yaml").read_text())["global"]["authorization"]
    assert EXTERNAL["jwks_uri"] not in server["jwtKeyProvider"]["keySourceURIs"]
    assert len(server["jwtKeyProvider"]["keySourceURIs"]) == 1
    assert server["permissionsClaimName"] == "groups" and server["audience"] == "temporal-ui"
    _, claims = decode_unverified((out / "tokens" / "worker.jwt").read_text().strip())
    assert claims["groups"] == claims["permissions"] and "roles" not in claims
    layout = _layout(out)
    assert layout.leaf("exchange", "server")[0].exists() and layout.exchange_signing_key.exists()

def test_external_issuer_has_no_admin_password(tmp_path, cli):
    secret, _ = _external_files(tmp_path)
    config, out, _ = _init(tmp_path, cli, external(client_secret_file=str(secret)))
    shown = cli("show-admin-password", "--config", config, "--out", out)
    shown.assert_one_error("no embedded Dex", "users log in at https://idp.example.com/realms/acme")


@pytest.mark.parametrize("broken, message", [
    ("secret", "oidc.external.client_secret_file: cannot read"),
    ("ca", "oidc.external.ca_file: cannot read"),
    ("not-a-cert", "holds no PEM certificate"),
])
def test_external_unreadable_files_fail_before_writing(tmp_path, cli, broken, message):
    secret, ca = _external_files(tmp_path)
    if broken == "not-a-cert":
        ca.write_text("not a certificate\n")
    section = external(client_secret_file=str(tmp_path / "absent") if broken == "secret" else str(secret),
                       ca_file=str(tmp_path / "absent") if broken == "ca" else str(ca))
    config = tmp_path / "bundle.yaml"
    config.write_text(yaml.safe_dump({"namespaces": NAMESPACES, "oidc": section}))
    result = cli("init", "--config", config, "--out", tmp_path / "out")
    assert result.code == 1 and result.out == "" and message in result.err
    assert result.err.startswith("error: ") and len(result.err.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "ui").exists() and not (tmp_path / "out" / "tokens").exists()
