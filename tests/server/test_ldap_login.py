"""Company directory login for real: Debian's slapd seeded with people and company-style groups,
Dex v2.45.1's LDAP connector rendered from bundle.yaml (`oidc.connectors`, its bind password read
from a file at render), Dex on loopback with TLS, and a user logging in through Dex's own login
form over HTTP (authorization code, no browser). The ID token's groups are the user's LDAP groups,
named as the directory names them; filter characters in a user name or a group do not widen
Dex's searches; a user removed from a group loses it at the next refresh, which re-reads LDAP."""

from __future__ import annotations

import time

import pytest
import yaml

from tests.support.binaries import run_cli
from tests.support.dex import Dex, LoginRefused, claims_of
from tests.support.ldap import GROUPS, INJECTION_GROUP, SUFFIX, dex_connector, start_directory
from tests.support.ports import free_port

pytestmark = [pytest.mark.server, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def directory():
    directory = start_directory()
    yield directory
    directory.stop()


@pytest.fixture(scope="module")
def dex(directory, tmp_path_factory):
    work = tmp_path_factory.mktemp("ldap-dex")
    bind_pw = work / "ldap-bind-password"
    bind_pw.write_text(directory.service_password + "\n")
    port = free_port()
    config = {
        "namespaces": [{"name": "default"}, {"name": "payments"}],
        "oidc": {"port": port, "token_lifetime": "2m", "connectors": [
            dex_connector("ldap", directory.host, bind_pw, ca={"rootCA": str(directory.ca_pem)},
                          name="Directory (ldap)"),
            # The same directory, groups named by their DN ("cn=sre,ou=groups,..."), its CA put
            # into Dex's config at render.
            dex_connector("ldap-dn", directory.host, bind_pw, ca={"rootCAData_file": str(directory.ca_pem)},
                          group_name_attr="DN", name="Directory (ldap-dn)")]},
    }
    (work / "bundle.yaml").write_text(yaml.safe_dump(config))
    run_cli("init", "--config", str(work / "bundle.yaml"), "--out", str(work / "bundle"))
    dex = Dex(work / "bundle", work, port).start()
    yield dex
    dex.stop()


def groups_of(tokens: dict) -> list[str]:
    return sorted(claims_of(tokens["id_token"]).get("groups", []))


def test_an_ldap_user_logs_in_through_dex_with_their_directory_groups(dex):
    tokens = dex.login("alice", "alice-pw-1", "ldap")
    claims = claims_of(tokens["id_token"])
    assert claims["iss"] == dex.issuer and claims["aud"] == dex.client_id
    assert claims["email"] == "alice@example.com"
    assert groups_of(tokens) == ["payments-oncall", "staff"]
    assert tokens.get("refresh_token")


def test_groups_named_by_their_dn(dex):
    assert groups_of(dex.login("bob", "bob-pw-2", "ldap-dn")) == [f"cn=sre,{GROUPS}", f"cn=staff,{GROUPS}"]


def test_a_group_shaped_like_a_permission_arrives_as_a_plain_name(dex):
    # Dex passes it on; only the bundle's mapping may give it a meaning.
    assert groups_of(dex.login("mallory", "mallory-pw-5", "ldap")) == ["payments:admin", "staff"]


def test_a_user_in_no_group_logs_in_with_none_but_the_shared_one(dex):
    assert groups_of(dex.login("carol", "carol-pw-3", "ldap")) == ["staff"]


@pytest.mark.parametrize("username, password", [
    ("alice", "wrong"),
    ("*", "alice-pw-1"),               # a wildcard user name matches nobody, not everybody
    ("al*", "alice-pw-1"),
    ("alice)(uid=*", "alice-pw-1"),
    ("*)(|(uid=*", "bob-pw-2"),
    ("alice", ""),                     # no unauthenticated bind
])
def test_wrong_or_wildcard_credentials_are_refused(dex, username, password):
    with pytest.raises(LoginRefused):
        dex.login(username, password, "ldap")


def test_filter_characters_in_a_users_dn_do_not_widen_the_group_search(dex, directory):
    # eve's DN is "cn=eve*)(member=*,...": pasted into (member=<her DN>) unescaped it would match every group.
    tokens = dex.login("eve", "eve-pw-4", "ldap")
    assert groups_of(tokens) == [INJECTION_GROUP]
    sent = [f for f in directory.filters_logged() if "member=" in f and "eve" in f]
    assert sent and all("eve\\2a\\29\\28member" in f.lower() for f in sent), sent


def test_removal_from_an_ldap_group_is_seen_at_the_next_refresh(dex, directory):
    tokens = dex.login("alice", "alice-pw-1", "ldap")
    assert "payments-oncall" in groups_of(tokens)
    lifetime = claims_of(tokens["id_token"])["exp"] - claims_of(tokens["id_token"])["iat"]
    assert lifetime == 120  # oidc.token_lifetime: how long a token already issued keeps the group
    directory.remove_member("payments-oncall", "alice")
    try:
        removed = time.monotonic()
        refreshed = dex.refresh(tokens["refresh_token"])
        seen = time.monotonic() - removed
        assert groups_of(refreshed) == ["staff"]
        print(f"removal seen by the first refresh after it: {seen * 1000:.0f} ms after the LDAP change; "
              f"tokens issued before keep the group until their exp ({lifetime} s)")
    finally:
        directory.add_member("payments-oncall", "alice")
    assert "payments-oncall" in groups_of(dex.refresh(refreshed["refresh_token"]))


def test_dex_binds_with_the_rendered_password_literally(dex, directory):
    # The service account's password holds '$' (and '$HOME'): logins work only because Dex runs
    # with DEX_EXPAND_ENV=false, as compose starts it.
    assert "$" in directory.service_password
    rendered = next(c for c in dex.document["connectors"] if c["id"] == "ldap")["config"]
    assert rendered["bindPW"] == directory.service_password and "bindPW_file" not in rendered
    assert SUFFIX in rendered["bindDN"]
