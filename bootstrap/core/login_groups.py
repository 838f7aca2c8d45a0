"""People who log in through Dex (the Web UI, the terminal): their directory groups, of any name,
become Temporal permissions through one table, `oidc.groups` in bundle.yaml. Pure.

    oidc:
      groups:
        payments-oncall: ["payments:write"]
        "cn=sre,ou=groups,dc=example,dc=com": ["temporal-system:read"]

A verified Dex token names its connector and the user's id there (Dex's `sub` is a small protobuf
of both) and carries the user's groups as the connector returned them (LDAP's cn or DN, GitHub's
org:team...). The permissions are:
  - for an upstream connector (LDAP, GitHub, OIDC...): the union of the mapped permissions of the
    token's groups that the table names, exactly (case and spaces count). A group the table does
    not name grants nothing, whatever it looks like: a group literally called `payments:admin`
    is just a name;
  - for Dex's own password database (connector `local`, the bundle's `oidc.users` and `admin`):
    what the table grants the user's configured groups now, looked up by user id; the groups Dex
    wrote into the token are not read.
The table itself is checked when bundle.yaml is read: every permission names a configured
namespace (or temporal-system) and a role Temporal's authorizer knows.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from .claims import PERMISSIONS_CLAIM
from .permissions import SYSTEM_NAMESPACE

LOCAL_CONNECTOR = "local"  # Dex's password database: the bundle's own users
USER_ID_PREFIX = "temporal-bundle-"  # ops/oidc renders each bundle user's Dex userID so
PRINCIPAL_PREFIX = "user"


def mapped_permissions(groups: Any, mapping) -> tuple[str, ...]:
    """The permissions `mapping` ((group, permissions) pairs) gives these groups; non-strings and
    unmapped names give nothing. Order: the groups', duplicates dropped."""
    table = dict(mapping)
    if not isinstance(groups, list):
        return ()
    granted: list[str] = []
    for group in groups:
        if isinstance(group, str) and group in table:
            granted.extend(table[group])
    return tuple(dict.fromkeys(granted))


def dex_subject(sub: Any) -> tuple[str, str] | None:
    """(user id, connector id) from Dex's `sub`: base64url (no padding) of the protobuf message
    {1: user_id, 2: conn_id}. None for anything else."""
    if not isinstance(sub, str) or not sub or len(sub) > 2048:
        return None
    try:
        raw = base64.urlsafe_b64decode(sub + "=" * (-len(sub) % 4))
    except (ValueError, TypeError):
        return None
    fields: dict[int, str] = {}
    i = 0
    while i < len(raw):
        key, i = _varint(raw, i)
        if key is None or key & 7 != 2:  # only length-delimited fields belong here
            return None
        length, i = _varint(raw, i)
        if length is None or i + length > len(raw):
            return None
        try:
            fields[key >> 3] = raw[i:i + length].decode("utf-8")
        except UnicodeDecodeError:
            return None
        i += length
    if set(fields) != {1, 2} or not fields[1] or not fields[2]:
        return None
    return fields[1], fields[2]


def _varint(raw: bytes, i: int) -> tuple[int | None, int]:
    value = shift = 0
    while i < len(raw) and shift < 35:
        byte = raw[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7
    return None, i


def login_principal(claims: dict, oidc=None) -> str:
    """The name the exchanged token carries as `sub` (what history's principal shows):
    user:<connector>:<user id> for Dex, e.g. user:ldap:alice, user:local:admin; user:<sub> for an
    external IdP (`oidc`: the OIDCConfig, whose `external` says which)."""
    found = None if oidc is not None and oidc.external is not None else dex_subject(claims.get("sub"))
    if found is None:
        return f"{PRINCIPAL_PREFIX}:{claims.get('sub')}"
    user_id, connector = found
    if connector == LOCAL_CONNECTOR:
        user_id = user_id.removeprefix(USER_ID_PREFIX)
    return f"{PRINCIPAL_PREFIX}:{connector}:{user_id}"


def login_permissions(claims: dict, oidc) -> tuple[str, ...]:
    """What a verified login token grants under `oidc` (the OIDCConfig): see the module's doc. An
    external IdP's token: its groups claim through the table, as an upstream connector's."""
    if oidc.external is not None:
        return mapped_permissions(claims.get(oidc.login_groups_claim), oidc.groups)
    found = dex_subject(claims.get("sub"))
    if found is None:
        return ()
    user_id, connector = found
    if connector == LOCAL_CONNECTOR:
        users = {USER_ID_PREFIX + u.username: u for u in (oidc.admin, *oidc.users)}
        user = users.get(user_id)
        return oidc.permissions_of(user) if user is not None else ()
    if connector not in {c.id for c in oidc.connectors}:
        return ()  # a connector this bundle does not configure (a Dex config out of date)
    return mapped_permissions(claims.get(oidc.login_groups_claim), oidc.groups)


def unmapped_reason(claims: dict, claim: str = PERMISSIONS_CLAIM, shown: int = 5) -> str:
    """Why a user who logged in got nothing: safe to show them (their own groups, clipped)."""
    groups = [g for g in claims.get(claim) or [] if isinstance(g, str)] if isinstance(claims.get(claim), list) else []
    if not groups:
        return "you are in no group the directory reported; oidc.groups maps groups to Temporal permissions"
    named = ", ".join(repr(g[:80]) for g in groups[:shown]) + (f" and {len(groups) - shown} more" if len(groups) > shown else "")
    return f"none of your groups ({named}) is mapped to a Temporal permission in oidc.groups"


def grafana_role_path(oidc) -> str:
    """Grafana's role_attribute_path: JMESPath over a Dex ID token asked with the scope
    `federated:id` (its `federated_claims` name the connector). Admin for cluster admins, Viewer
    for everyone else. Cluster admins are the bundle's own users whose token groups hold
    temporal-system:admin (Dex's config carries their mapped permissions), and the users of a
    configured connector in a group oidc.groups maps to temporal-system:admin. A directory group
    merely named `temporal-system:admin` makes nobody an admin; neither does a token without
    federated claims."""
    admin = f"{SYSTEM_NAMESPACE}:admin"
    connector = "federated_claims.connector_id"
    terms = [f"({connector} == '{LOCAL_CONNECTOR}' && contains(not_null(groups, `[]`), '{admin}'))"]
    admin_groups = [name for name, permissions in oidc.groups if admin in permissions]
    if oidc.connectors and admin_groups:
        ids = _jmespath_literal([c.id for c in oidc.connectors])
        terms.append(f"(contains({ids}, {connector}) && groups[?contains({_jmespath_literal(admin_groups)}, @)])")
    return f"({' || '.join(terms)}) && 'Admin' || 'Viewer'"


def _jmespath_literal(value) -> str:
    """A JSON literal in JMESPath: the JSON text between backticks, each backtick in it escaped."""
    return "`" + json.dumps(value).replace("`", "\\`") + "`"


def login_token(key, claims: dict, permissions: tuple[str, ...], *, issuer: str, audience: str, lifetime, now,
                subject: str | None = None):
    """The bundle token a verified login token is exchanged for: `sub` the user (login_principal),
    the mapped permissions, `lifetime` at most and never past the login token's own exp (so the
    bound on a removal from a group is the IdP token's lifetime). None if that token has expired."""
    from datetime import timedelta

    from .tokens import mint_token

    left = claims["exp"] - int(now.timestamp())
    if left <= 0:
        return None
    lifetime = min(lifetime, timedelta(seconds=left))
    token = mint_token(key, role="login", permissions=permissions, issuer=issuer, audience=audience,
                       lifetime=lifetime, subject=subject or login_principal(claims), now=now)
    return token


class LoginMapping:
    """oidc.groups applied to every verified token of the login issuer: the codec server (and the
    key service beside it) reads the mapped permissions where it reads a role token's."""

    def __init__(self, issuer: str, oidc, claim: str = PERMISSIONS_CLAIM, exchanged: bool = False):
        # exchanged: the frontend sees these people through the exchange's tokens (oidc.login_exchange)
        self.issuer, self.oidc, self.claim, self.exchanged = issuer, oidc, claim, exchanged

    def applies(self, claims: dict) -> bool:
        return claims.get("iss") == self.issuer

    def principal(self, claims: dict) -> str | None:
        """The name history stamps for this person: the exchanged token's `sub`, or Dex's own."""
        return login_principal(claims, self.oidc) if self.exchanged else claims.get("sub")

    def mapped(self, claims: dict) -> dict:
        granted = list(login_permissions(claims, self.oidc))
        return {**claims, self.claim: granted, "permissions": granted,
                "login_groups": claims.get(self.oidc.login_groups_claim)}


@dataclass(frozen=True)
class LoginPolicy:
    """The token exchange's policy for people's tokens from the login issuer (Dex): verified like a
    workload issuer's (discovery, JWKS, iss, aud = the UI's client id = jwt.audience, exp), their
    groups mapped through oidc.groups. The UI gate exchanges them there."""

    issuer: Any  # a core.config.workload.WorkloadIssuer of type oidc: Dex's issuer URL, jwt.audience, the bundle's CA
    oidc: Any  # the OIDCConfig: groups, users, connectors
    lifetime: timedelta = timedelta(minutes=5)
