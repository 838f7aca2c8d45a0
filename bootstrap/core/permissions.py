"""Temporal's namespaces-and-roles model, once, as its default claim mapper and authorizer have it
(v1.31.x): a permission is "<namespace>:<role>"; roles are bit flags worker=1 < read=2 < write=4 <
admin=8 and a check passes when `have >= required`, so `<ns>:worker` alone is denied everything;
`temporal-system:<role>` is the cluster-wide role. Pure and light: reading the config imports it,
and that must not load the JWT or crypto libraries."""

from __future__ import annotations

from typing import Any

from .claims import PERMISSIONS_CLAIM

SYSTEM_NAMESPACE = "temporal-system"
ROLE_BITS = {"worker": 1, "read": 2, "write": 4, "admin": 8}
NAMESPACE_ROLES = tuple(ROLE_BITS)  # lowest first


def split_permission(permission: Any) -> tuple[str, str] | None:
    """(namespace, role) of a "<namespace>:<role>" entry; None for anything else, which the claim
    mapper skips. The role is returned as written: the config wants it exact, tokens are lenient."""
    if not isinstance(permission, str) or permission.count(":") != 1:
        return None
    namespace, role = permission.split(":")
    return namespace, role


def permissions_of(claims: dict, claim: str = PERMISSIONS_CLAIM) -> list:
    permissions = claims.get(claim)
    return permissions if isinstance(permissions, list) else []


def role_for(claims: dict, namespace: str, claim: str = PERMISSIONS_CLAIM) -> int:
    """The role bits a token holds on `namespace`, as the default claim mapper and authorizer
    compute them: namespace grants and system grants OR-ed separately, the better wins."""
    namespace_bits = system_bits = 0
    for scope, role in filter(None, map(split_permission, permissions_of(claims, claim))):
        bits = ROLE_BITS.get(role.lower(), 0)
        if scope == SYSTEM_NAMESPACE:
            system_bits |= bits
        elif scope == namespace:
            namespace_bits |= bits
    return max(namespace_bits, system_bits)


def grants(claims: dict, namespace: str, required: str, claim: str = PERMISSIONS_CLAIM) -> bool:
    return role_for(claims, namespace, claim) >= ROLE_BITS[required]


def implied(permissions: tuple[str, ...]) -> set[str]:
    """Valid permissions plus the lower roles each grants on its scope (`have >= required`)."""
    out = set()
    for namespace, role in map(split_permission, permissions):
        out |= {f"{namespace}:{lower}" for lower in NAMESPACE_ROLES[: NAMESPACE_ROLES.index(role) + 1]}
    return out
