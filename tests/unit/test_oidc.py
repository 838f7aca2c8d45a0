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
                                     "redirectURIs": ["https://localhost:8080/auth/sso/callback"]},
                                    {"id": "grafana", "name": "Grafana", "secret": grafana,
                                     "redirectURIs": ["https://localhost:3000/login/generic_oauth"]}]
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
