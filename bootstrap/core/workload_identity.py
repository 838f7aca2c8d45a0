"""Workload identity: the policy of `workload_identity:` in bundle.yaml (parsed by config/workload.py),
the check of a subject token
(a Kubernetes service-account token, or any OIDC issuer's JWT) and the short-lived Temporal token
the exchange returns for it. Pure: no files, no network (the server fetches the keys).

The exchange (RFC 8693 style) keeps the official server image and its default claim mapper: the
server only ever sees tokens of the bundle's own shape (kid, sub, permissions), signed by a key of
the bundle's JWKS. What is new (issuers, bindings) lives here, next to the JWKS server.

A binding grants Temporal permissions to identities matching its patterns (`*` and `?`):

    bindings:
      - issuer: cluster             # a name from issuers (default: every kubernetes issuer)
        namespace: "team-*"         # the pod's Kubernetes namespace
        service_account: worker     # its service account
        permissions: ["orders:write", "{namespace}:write"]
      - issuer: ci                  # an OIDC issuer: match the subject instead
        subject: "repo:acme/orders:*"
        permissions: ["orders:write"]

`{namespace}` stands for the caller's Kubernetes namespace and grants only when a Temporal namespace
of that name is configured. With `default_bindings: true` (the default) every configured Temporal
namespace N is bound for pods of Kubernetes namespace N: `N:write`, any service account.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from datetime import datetime, timedelta

import jwt

from .config.workload import (NAMESPACE_PLACEHOLDER, Binding, WorkloadIdentityConfig, WorkloadIssuer,
                              parse_workload_identity)
from .permissions import split_permission
from .tokens import SigningKey, Token, mint_token, verify_token

KUBE_CLAIM = "kubernetes.io"
# Seconds of clock skew allowed between the cluster and the exchange (exp, nbf, iat).
LEEWAY = 30

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
ISSUED_TOKEN_TYPE = JWT_TOKEN_TYPE

__all__ = [
    "ACCESS_TOKEN_TYPE", "GRANT_TYPE", "ISSUED_TOKEN_TYPE", "JWT_TOKEN_TYPE", "KUBE_CLAIM", "LEEWAY",
    "Binding", "Identity", "Refused", "WorkloadIdentityConfig", "WorkloadIssuer",
    "check_kubernetes_claims", "exchanged_token", "parse_workload_identity", "permissions_for", "verify_subject",
]


# --------------------------------------------------------------------------- identities and policy


@dataclass(frozen=True)
class Identity:
    issuer: WorkloadIssuer
    subject: str
    claims: dict
    namespace: str = ""  # kubernetes only
    service_account: str = ""
    pod: str = ""


class Refused(Exception):
    """A subject token the exchange will not take; the message is safe to return to the caller."""


def check_kubernetes_claims(claims: dict, issuer: WorkloadIssuer) -> tuple[str, str, str]:
    """(namespace, service account, pod) from a service-account token, the way kube-apiserver
    writes them: sub system:serviceaccount:<ns>:<sa>, and the same names under kubernetes.io."""
    kube = claims.get(KUBE_CLAIM)
    if not isinstance(kube, dict):
        raise Refused("not a Kubernetes service-account token (no kubernetes.io claim)")
    namespace = kube.get("namespace")
    account = (kube.get("serviceaccount") or {}).get("name") if isinstance(kube.get("serviceaccount"), dict) else None
    if not isinstance(namespace, str) or not isinstance(account, str):
        raise Refused("kubernetes.io claim lacks namespace or serviceaccount")
    if claims.get("sub") != f"system:serviceaccount:{namespace}:{account}":
        raise Refused("sub does not match the kubernetes.io namespace and service account")
    pod = kube.get("pod")
    pod_name = pod.get("name") if isinstance(pod, dict) else None
    if issuer.require_pod_binding and not (isinstance(pod_name, str) and isinstance(pod.get("uid"), str)):
        raise Refused("the token is not bound to a pod (use a projected service-account token)")
    return namespace, account, pod_name or ""


def verify_subject(encoded: str, issuer: WorkloadIssuer, jwks: dict) -> Identity:
    """Signature (kid in the issuer's JWKS, RS256/ES256), iss, aud, exp, nbf and iat."""
    try:
        claims = verify_token(encoded, jwks, audience=issuer.audience, issuers=(issuer.issuer,), leeway=LEEWAY)
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise Refused(f"subject token rejected: {exc}") from None
    if issuer.type == "kubernetes":
        if "nbf" not in claims:
            raise Refused("subject token rejected: no nbf claim")
        namespace, account, pod = check_kubernetes_claims(claims, issuer)
        return Identity(issuer, claims["sub"], claims, namespace, account, pod)
    return Identity(issuer, claims["sub"], claims)


def _matches(binding: Binding, identity: Identity) -> bool:
    if identity.issuer.name not in binding.issuers:
        return False
    if identity.issuer.type == "kubernetes":
        return (fnmatch.fnmatchcase(identity.namespace, binding.namespace)
                and fnmatch.fnmatchcase(identity.service_account, binding.service_account))
    return fnmatch.fnmatchcase(identity.subject, binding.subject)


def permissions_for(policy: WorkloadIdentityConfig, identity: Identity, namespaces: tuple[str, ...]) -> tuple[str, ...]:
    """Every permission of every binding the identity matches; `{namespace}` only when it names a
    configured Temporal namespace (never temporal-system, which validation already keeps out)."""
    granted: list[str] = []
    for binding in policy.bindings:
        if not _matches(binding, identity):
            continue
        for permission in binding.permissions:
            scope, role = split_permission(permission)  # validated when the config was read
            if scope == NAMESPACE_PLACEHOLDER:
                if identity.namespace not in namespaces:
                    continue
                permission = f"{identity.namespace}:{role}"
            granted.append(permission)
    return tuple(dict.fromkeys(granted))


def exchanged_token(
    key: SigningKey, identity: Identity, permissions: tuple[str, ...], *, issuer: str, audience: str,
    lifetime: timedelta, now: datetime,
) -> Token:
    """The Temporal token: the bundle's shape, `lifetime` at most and never past the subject's exp."""
    left = identity.claims["exp"] - int(now.timestamp())  # integers: an exp past any float or timedelta is fine
    if left <= 0:
        raise Refused("subject token rejected: expired")
    if left < lifetime.total_seconds():
        lifetime = timedelta(seconds=left)
    subject = f"{identity.issuer.name}:{identity.subject}"
    return mint_token(key, role="workload", permissions=permissions, issuer=issuer, audience=audience,
                      lifetime=lifetime, subject=subject, now=now)


def token_review_request(token: str, audience: str) -> dict:
    """A TokenReview (authentication.k8s.io/v1) asking the API server about a subject token."""
    return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": token, "audiences": [audience]}}


def review_accepts(doc: dict, subject: str) -> bool:
    """The API server's answer says the token authenticates, as the subject it names (a token
    whose pod or service account was deleted comes back authenticated: false)."""
    status = doc.get("status") if doc.get("kind") == "TokenReview" else None
    if not isinstance(status, dict) or status.get("authenticated") is not True:
        return False
    user = status.get("user")
    return isinstance(user, dict) and user.get("username") == subject
