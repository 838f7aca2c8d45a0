"""Dex's LDAP connector from bundle.yaml (`oidc.connectors`, type ldap): checked against the options
Dex v2.45.1's connector reads, its bind password read from a file at render, one-line errors."""

from __future__ import annotations

import pytest
import yaml

from bootstrap.core.config import parse_config
from bootstrap.errors import BundleError
from bootstrap.ops.oidc import dex_config_path

NAMESPACES = [{"name": "default"}, {"name": "payments"}]


def ldap(**config):
    body = {
        "host": "ldap.example.com:636",
        "rootCA": "/etc/temporal-bundle/secrets/ldap-ca.pem",
        "bindDN": "cn=dex,ou=services,dc=example,dc=com",
        "bindPW_file": "/etc/temporal-bundle/secrets/ldap-bind-password",
        "userSearch": {"baseDN": "ou=people,dc=example,dc=com", "filter": "(objectClass=inetOrgPerson)",
                       "username": "uid", "idAttr": "uid", "emailAttr": "mail", "nameAttr": "cn"},
        "groupSearch": {"baseDN": "ou=groups,dc=example,dc=com", "filter": "(objectClass=groupOfNames)",
                        "userMatchers": [{"userAttr": "DN", "groupAttr": "member"}], "nameAttr": "cn"},
    }
    for key, value in config.items():
        if value is None:
            body.pop(key, None)
        elif isinstance(value, dict) and isinstance(body.get(key), dict):
            body[key] = {k: v for k, v in {**body[key], **value}.items() if v is not None}
        else:
            body[key] = value
    return {"type": "ldap", "id": "corp", "name": "Corporate directory", "config": body}


def parsed(connector):
    return parse_config({"namespaces": NAMESPACES, "oidc": {"connectors": [connector]}}).oidc


def test_a_complete_ldap_connector_is_taken():
    connector = parsed(ldap()).connectors[0]
    assert connector.type == "ldap" and dict(connector.secret_files) == {"bindPW": ldap()["config"]["bindPW_file"]}


@pytest.mark.parametrize("config, message", [
    ({"host": None}, "host is required"),
    ({"userSearch": {"baseDN": None}}, "userSearch.baseDN is required"),
    ({"userSearch": {"username": None}}, "userSearch.username is required"),
    ({"userSearch": {"idAttr": None}}, "userSearch.idAttr is required"),
    ({"userSearch": {"emailAttr": None}}, "userSearch.emailAttr is required"),
    ({"groupSearch": {"nameAttr": None}}, "groupSearch.nameAttr is required"),
    ({"groupSearch": {"userMatchers": None}}, "groupSearch.userMatchers is required"),
    ({"groupSearch": {"userMatchers": [{"userAttr": "DN"}]}}, "userMatchers[0]: groupAttr is required"),
    ({"bindPW": "hunter2", "bindPW_file": None}, "bindPW: secrets are read from files; use bindPW_file"),
    ({"bindPW_file": None}, "bindDN needs bindPW_file"),
    ({"insecureNoSSL": True}, "insecureNoSSL sends every password in clear"),
    ({"insecureSkipVerify": True}, "insecureSkipVerify accepts any certificate"),
    ({"userSearch": {"scope": "base"}}, "userSearch: scope must be one of sub, one"),
    ({"usersearch": {}}, "unknown key 'usersearch'"),
    ({"userSearch": {"emailattr": "mail"}}, "userSearch: unknown key 'emailattr'"),
    ({"host": 636}, "host must be a string"),
    ({"rootCAData": "LS0t"}, "rootCAData: give rootCAData_file"),
    ({"rootCAData_file": "/ca.pem"}, "rootCA and rootCAData_file exclude each other"),
    ({"bindDN_file": "/dn"}, "bindDN_file: Dex's LDAP connector reads files for bindPW and rootCAData only"),
])
def test_ldap_connector_is_checked_at_load(config, message):
    with pytest.raises(BundleError, match=message.replace("(", r"\(").replace("[", r"\[").replace("]", r"\]")) as info:
        parsed(ldap(**config))
    assert "\n" not in str(info.value)


def test_the_bind_password_is_read_at_render_and_dex_expands_nothing(tmp_path, cli):
    secret = tmp_path / "bind-password"
    secret.write_text("pa$$w0rd-$HOME\n")  # Dex would expand $HOME and $$ with its default expand_env
    connector = ldap(bindPW_file=str(secret))
    config = tmp_path / "bundle.yaml"
    config.write_text(yaml.safe_dump({"namespaces": NAMESPACES, "oidc": {"connectors": [connector]}}))
    result = cli("init", "--config", config, "--out", tmp_path / "out")
    assert result.code == 0, result.err
    from bootstrap.store import Layout
    dex = yaml.safe_load(dex_config_path(Layout((tmp_path / "out").resolve())).read_text())
    rendered = dex["connectors"][0]["config"]
    assert rendered["bindPW"] == "pa$$w0rd-$HOME" and "bindPW_file" not in rendered
    assert "pa$$w0rd" not in result.out + result.err


def test_an_unreadable_bind_password_file_writes_nothing(tmp_path, cli):
    config = tmp_path / "bundle.yaml"
    config.write_text(yaml.safe_dump({"namespaces": NAMESPACES,
                                      "oidc": {"connectors": [ldap(bindPW_file=str(tmp_path / "absent"))]}}))
    result = cli("init", "--config", config, "--out", tmp_path / "out")
    assert result.code == 1 and result.err.count("error:") == 1 and "bindPW_file" in result.err
    assert not (tmp_path / "out" / "dex").exists()


def test_with_a_directory_the_server_trusts_only_the_bundles_keys(tmp_path, cli):
    from bootstrap.ops.render import render_all
    from bootstrap.store import Layout

    def key_sources(section):
        config = parse_config({"namespaces": NAMESPACES, "oidc": section})
        return yaml.safe_load(render_all(config)["temporal.yaml"])["global"]["authorization"]["jwtKeyProvider"]["keySourceURIs"]

    # Dex's groups are the bundle's own: Dex stays a key source. With a directory they are not.
    assert key_sources({}) == ["https://jwks:8443/jwks.json", "https://auth.localhost:5556/dex/keys"]
    assert key_sources({"connectors": [ldap()]}) == ["https://jwks:8443/jwks.json"]
    # ... and init makes the exchange's key (published in jwks.json) and certificate for the gate.
    secret = tmp_path / "bind-password"
    secret.write_text("pw\n")
    config = tmp_path / "bundle.yaml"
    config.write_text(yaml.safe_dump({"namespaces": NAMESPACES, "oidc": {"connectors": [ldap(bindPW_file=str(secret))]}}))
    assert cli("init", "--config", config, "--out", tmp_path / "out").code == 0
    layout = Layout((tmp_path / "out").resolve())
    assert layout.exchange_signing_key.is_file() and layout.leaf("exchange", "server")[0].is_file()


def test_the_directory_ca_travels_inside_dex_config(tmp_path, cli):
    import base64
    from bootstrap.store import Layout

    (tmp_path / "pw").write_text("pw\n")
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    connector = ldap(rootCA=None, rootCAData_file=str(tmp_path / "ca.pem"), bindPW_file=str(tmp_path / "pw"))
    config = tmp_path / "bundle.yaml"
    config.write_text(yaml.safe_dump({"namespaces": NAMESPACES, "oidc": {"connectors": [connector]}}))
    assert cli("init", "--config", config, "--out", tmp_path / "out").code == 0
    dex = yaml.safe_load(dex_config_path(Layout((tmp_path / "out").resolve())).read_text())
    rendered = dex["connectors"][0]["config"]
    assert base64.b64decode(rendered["rootCAData"]).decode() == (tmp_path / "ca.pem").read_text()
