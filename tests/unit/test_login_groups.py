"""Directory groups of any name -> Temporal permissions through oidc.groups (core/login_groups):
the one table for every Dex connector, checked when bundle.yaml is read."""

from __future__ import annotations

import base64

import pytest

from bootstrap.core.config import parse_config
from bootstrap.core.login_groups import dex_subject, login_permissions, login_principal, mapped_permissions, unmapped_reason
from bootstrap.errors import BundleError

NAMESPACES = [{"name": "default"}, {"name": "payments"}, {"name": "orders"}]
SRE_DN = "cn=sre,ou=groups,dc=example,dc=com"
GROUPS = {"admins": ["temporal-system:admin"], "payments-oncall": ["payments:write"],
          SRE_DN: ["temporal-system:read"], "orders-readers": ["orders:read"]}
LDAP = {"type": "ldap", "id": "ldap", "config": {
    "host": "ldap.example.com:636", "userSearch": {"baseDN": "ou=people,dc=example,dc=com", "username": "uid",
                                                  "idAttr": "uid", "emailAttr": "mail"}}}


def oidc(groups=GROUPS, **extra):
    return parse_config({"namespaces": NAMESPACES, "oidc": {"groups": groups, "connectors": [LDAP], **extra}}).oidc


def sub(user_id: str, connector: str) -> str:
    def field(number, text):
        data = text.encode()
        return bytes([number << 3 | 2, len(data)]) + data
    return base64.urlsafe_b64encode(field(1, user_id) + field(2, connector)).rstrip(b"=").decode()


def test_dex_subjects_are_read_as_dex_writes_them():
    # The admin's sub as a running Dex v2.45.1 issued it (docs/audit.md).
    assert dex_subject("ChV0ZW1wb3JhbC1idW5kbGUtYWRtaW4SBWxvY2Fs") == ("temporal-bundle-admin", "local")
    assert dex_subject(sub("alice", "ldap")) == ("alice", "ldap")
    for bad in ("", "not base64 !", base64.urlsafe_b64encode(b"\x08\x01").decode(), sub("alice", "")[:-2], 7, None):
        assert dex_subject(bad) is None


def test_company_group_names_map_to_permissions():
    config = oidc()
    claims = {"sub": sub("alice", "ldap"), "groups": ["payments-oncall", "staff", SRE_DN]}
    assert login_permissions(claims, config) == ("payments:write", "temporal-system:read")
    assert login_principal(claims) == "user:ldap:alice"


@pytest.mark.parametrize("groups", [
    ["staff"], [], None, "payments-oncall",          # unmapped, none, not a list
    ["payments:admin"], ["temporal-system:admin"],   # shaped like permissions: still just names
    ["Payments-Oncall"], [" payments-oncall"],       # names are exact
    [["payments-oncall"]], [{"payments-oncall": 1}],
])
def test_unmapped_groups_grant_nothing(groups):
    assert login_permissions({"sub": sub("mallory", "ldap"), "groups": groups}, oidc()) == ()


def test_a_group_shaped_like_a_permission_grants_only_what_the_table_says():
    config = oidc({**GROUPS, "payments:admin": ["payments:read"]})
    assert login_permissions({"sub": sub("mallory", "ldap"), "groups": ["payments:admin"]}, config) == ("payments:read",)


def test_a_connector_the_bundle_does_not_configure_grants_nothing():
    assert login_permissions({"sub": sub("alice", "github"), "groups": ["payments-oncall"]}, oidc()) == ()


def test_bundle_users_get_their_configured_groups_not_what_the_token_says():
    config = oidc()
    admin = {"sub": "ChV0ZW1wb3JhbC1idW5kbGUtYWRtaW4SBWxvY2Fs", "groups": []}
    assert login_permissions(admin, config) == ("temporal-system:admin",)
    assert login_principal(admin) == "user:local:admin"
    forged_groups = {"sub": sub("temporal-bundle-nobody", "local"), "groups": ["temporal-system:admin"]}
    assert login_permissions(forged_groups, config) == ()


def test_the_reason_names_the_users_groups():
    assert "'staff'" in unmapped_reason({"groups": ["staff"]}) and "oidc.groups" in unmapped_reason({"groups": ["staff"]})
    assert "no group" in unmapped_reason({})


def test_mapped_permissions_keeps_order_without_duplicates():
    assert mapped_permissions(["a", "b", "a"], (("a", ("x:read",)), ("b", ("x:read", "y:write")))) == ("x:read", "y:write")


@pytest.mark.parametrize("groups, message", [
    ({"payments-oncall": ["billing:write"]}, "names namespace 'billing', which is not configured"),
    ({"payments-oncall": ["payments:owner"]}, "role must be one of worker, read, write, admin"),
    ({"payments-oncall": []}, "non-empty list"),
    ({"": ["payments:read"]}, "invalid group name"),
    ({"bad\nname": ["payments:read"]}, "invalid group name"),
    ({" padded": ["payments:read"]}, "invalid group name"),
])
def test_a_bad_mapping_is_refused_at_load_in_one_line(groups, message):
    with pytest.raises(BundleError, match=message) as info:
        oidc({**GROUPS, **groups})
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- an external IdP

IDP = {"issuer": "https://login.example.com/realms/acme",
       "jwks_uri": "https://login.example.com/realms/acme/protocol/openid-connect/certs",
       "client_id": "temporal-ui", "client_secret_file": "/run/secrets/ui", "groups_claim": "roles"}


def external_oidc(**groups):
    section = {"enabled": False, "external": IDP, **({"groups": groups["groups"]} if "groups" in groups else {})}
    return parse_config({"namespaces": NAMESPACES, "oidc": section}).oidc


def test_an_external_idps_groups_map_through_the_same_table():
    mapped = external_oidc(groups=GROUPS)
    assert mapped.login_exchange and mapped.permissions_claim == "groups" and mapped.login_groups_claim == "roles"
    claims = {"iss": IDP["issuer"], "sub": "00u1a2b3c4", "roles": ["payments-oncall", SRE_DN, "unmapped"]}
    assert login_permissions(claims, mapped) == ("payments:write", "temporal-system:read")
    assert login_principal(claims, mapped) == "user:00u1a2b3c4"
    # A group named like a permission is a name; the groups are read from groups_claim only.
    assert login_permissions({**claims, "roles": ["payments:admin"]}, mapped) == ()
    assert login_permissions({"iss": IDP["issuer"], "groups": ["payments-oncall"]}, mapped) == ()
    assert "none of your groups ('payments:admin')" in unmapped_reason({"roles": ["payments:admin"]}, "roles")


def test_without_a_table_an_external_idp_writes_permissions_itself_as_before():
    direct = external_oidc()
    assert not direct.login_exchange and direct.groups == ()
    assert direct.permissions_claim == "roles" == direct.login_groups_claim


def test_an_external_idps_table_is_checked_like_dexs():
    with pytest.raises(BundleError, match="names namespace 'billing', which is not configured"):
        external_oidc(groups={"payments-oncall": ["billing:write"]})
