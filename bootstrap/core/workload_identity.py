"""Workload identity: the policy of `workload_identity:` in bundle.yaml, the check of a subject token
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
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import jwt

from .config import NAMESPACE_ROLES, SYSTEM_NAMESPACE, _Section, _check_host, _check_permission
from ..errors import BundleError
from .tokens import SigningKey, Token, mint_token, verify_token

ISSUER_TYPES = ("kubernetes", "oidc")
NAMESPACE_PLACEHOLDER = "{namespace}"
PATTERN = re.compile(r"^[A-Za-z0-9*?][A-Za-z0-9._:/@*?-]{0,252}$")
MIN_LIFETIME, MAX_LIFETIME = timedelta(minutes=1), timedelta(hours=1)
KUBE_CLAIM = "kubernetes.io"
# Seconds of clock skew allowed between the cluster and the exchange (exp, nbf, iat).
LEEWAY = 30

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
ISSUED_TOKEN_TYPE = JWT_TOKEN_TYPE


@dataclass(frozen=True)
class WorkloadIssuer:
    name: str
    type: str
    issuer: str
    audience: str
    discovery_url: str = ""  # default: <issuer>/.well-known/openid-configuration
    jwks_uri: str = ""  # overrides the discovery document's jwks_uri (e.g. an in-cluster address)
    ca_file: str = ""  # roots for the discovery and JWKS fetches, besides the system's
    auth_token_file: str = ""  # bearer token for them (kube-apiserver asks for one by default)
    require_pod_binding: bool = True  # kubernetes: only tokens bound to a pod (TokenRequest, projected)

    @property
    def discovery(self) -> str:
        return self.discovery_url or self.issuer.rstrip("/") + "/.well-known/openid-configuration"


@dataclass(frozen=True)
class Binding:
    issuers: tuple[str, ...]
    namespace: str = ""
    service_account: str = ""
    subject: str = ""
    permissions: tuple[str, ...] = ()


@dataclass(frozen=True)
class WorkloadIdentityConfig:
    enabled: bool = False
    host: str = "token-exchange"
    port: int = 8444
    sans: tuple[str, ...] = ()
    token_lifetime: timedelta = timedelta(minutes=10)
    issuers: tuple[WorkloadIssuer, ...] = ()
    bindings: tuple[Binding, ...] = ()

    def issuer_for(self, iss: Any) -> WorkloadIssuer | None:
        return next((i for i in self.issuers if i.issuer == iss), None)


# --------------------------------------------------------------------------- parsing


def parse_workload_identity(sec: _Section, namespaces: tuple[str, ...]) -> WorkloadIdentityConfig:
    d = WorkloadIdentityConfig
    enabled = sec._get("enabled", bool(sec.data))
    if not isinstance(enabled, bool):
        raise BundleError(f"{sec.where}: enabled must be true or false")
    issuers = tuple(_parse_issuer(_Section(item, f"{sec.where}: issuers[{i}]")) for i, item in enumerate(sec.list("issuers")))
    default_bindings = sec._get("default_bindings", True)
    if not isinstance(default_bindings, bool):
        raise BundleError(f"{sec.where}: default_bindings must be true or false")
    known = {ns for ns in namespaces} | {SYSTEM_NAMESPACE}
    explicit = tuple(_parse_binding(_Section(item, f"{sec.where}: bindings[{i}]"), issuers, known)
                     for i, item in enumerate(sec.list("bindings")))
    kube = tuple(i.name for i in issuers if i.type == "kubernetes")
    defaults = tuple(Binding(kube, ns, "*", "", (f"{ns}:write",)) for ns in namespaces) if default_bindings and kube else ()
    config = WorkloadIdentityConfig(
        enabled=enabled,
        host=sec.host("host", d.host),
        port=sec.port("port", d.port),
        sans=sec.names("sans"),
        token_lifetime=sec.duration("token_lifetime", d.token_lifetime),
        issuers=issuers,
        bindings=explicit + defaults,
    )
    sec.done()
    if not MIN_LIFETIME <= config.token_lifetime <= MAX_LIFETIME:
        raise BundleError(f"{sec.where}: token_lifetime must be between 1m and 1h (exchanged tokens are short-lived)")
    if config.enabled and not issuers:
        raise BundleError(f"{sec.where}: enabled, but no issuers are configured")
    names = [i.name for i in issuers]
    if len(set(names)) != len(names) or len({i.issuer for i in issuers}) != len(issuers):
        raise BundleError(f"{sec.where}: issuer names and issuer URLs must be unique")
    return config


def _parse_issuer(sec: _Section) -> WorkloadIssuer:
    name = sec.string("name", "")
    if not re.match(r"^[a-z][a-z0-9-]{0,31}$", name):
        raise BundleError(f"{sec.where}: name {name!r}: lower-case letters, digits, '-'")
    issuer = WorkloadIssuer(
        name=name,
        type=sec.choice("type", "kubernetes", ISSUER_TYPES),
        issuer=_https_url(sec, "issuer", required=True),
        audience=sec.string("audience", ""),
        discovery_url=_https_url(sec, "discovery_url"),
        jwks_uri=_https_url(sec, "jwks_uri"),
        ca_file=_abs_path(sec, "ca_file"),
        auth_token_file=_abs_path(sec, "auth_token_file"),
        require_pod_binding=sec._get("require_pod_binding", True),
    )
    sec.done()
    if not issuer.audience:
        raise BundleError(f"{sec.where}: audience is required (the audience of the tokens the workloads present)")
    if not isinstance(issuer.require_pod_binding, bool):
        raise BundleError(f"{sec.where}: require_pod_binding must be true or false")
    return issuer


def _https_url(sec: _Section, key: str, required: bool = False) -> str:
    value = sec.string(key, "")
    if not value and not required:
        return ""
    match = re.match(r"^https://([^/:?#]+)(:[0-9]{1,5})?(/[^?#\s]*)?$", value)
    if not match:
        raise BundleError(f"{sec.where}: {key} {value!r} must be an https URL")
    _check_host(match.group(1), f"{sec.where}: {key}")
    return value


def _abs_path(sec: _Section, key: str) -> str:
    value = sec.string(key, "")
    if value and not value.startswith("/"):
        raise BundleError(f"{sec.where}: {key} must be an absolute path")
    return value


def _parse_binding(sec: _Section, issuers: tuple[WorkloadIssuer, ...], known: set[str]) -> Binding:
    by_name = {i.name: i for i in issuers}
    named = sec._get("issuer", None)
    if named is None:
        chosen = tuple(i.name for i in issuers if i.type == "kubernetes")
        if not chosen:
            raise BundleError(f"{sec.where}: issuer is required (no kubernetes issuer to default to)")
    elif not isinstance(named, str) or named not in by_name:
        raise BundleError(f"{sec.where}: issuer {named!r} is not one of the configured issuers")
    else:
        chosen = (named,)
    kinds = {by_name[n].type for n in chosen}
    binding = Binding(
        issuers=chosen,
        namespace=_pattern(sec, "namespace"),
        service_account=_pattern(sec, "service_account"),
        subject=_pattern(sec, "subject"),
        permissions=tuple(sec.list("permissions")),
    )
    sec.done()
    if kinds == {"kubernetes"}:
        if binding.subject or not binding.namespace or not binding.service_account:
            raise BundleError(f"{sec.where}: a kubernetes binding matches namespace and service_account (no subject)")
    elif binding.namespace or binding.service_account or not binding.subject:
        raise BundleError(f"{sec.where}: an oidc binding matches subject only")
    if not binding.permissions:
        raise BundleError(f"{sec.where}: permissions must not be empty")
    for permission in binding.permissions:
        _check_binding_permission(permission, binding, known, sec.where)
    return binding


def _pattern(sec: _Section, key: str) -> str:
    value = sec.string(key, "")
    if value and not PATTERN.match(value):
        raise BundleError(f"{sec.where}: {key} {value!r}: names with '*' and '?' wildcards only")
    return value


def _is_wildcard(binding: Binding) -> bool:
    return any(c in p for p in (binding.namespace, binding.service_account, binding.subject) for c in "*?")


def _check_binding_permission(permission: Any, binding: Binding, known: set[str], where: str) -> None:
    if isinstance(permission, str) and permission.startswith(NAMESPACE_PLACEHOLDER + ":"):
        if not binding.namespace:
            raise BundleError(f"{where}: {NAMESPACE_PLACEHOLDER} needs a kubernetes binding (a pod's namespace)")
        # It expands to configured Temporal namespaces only, so never to temporal-system.
        if permission.split(":", 1)[1] not in NAMESPACE_ROLES:
            raise BundleError(f"{where}: permission {permission!r}: role must be one of {', '.join(NAMESPACE_ROLES)}")
        return
    _check_permission(permission, known, where)
    if permission.startswith(SYSTEM_NAMESPACE + ":") and _is_wildcard(binding):
        raise BundleError(
            f"{where}: permission {permission!r} is bound through a wildcard; grant {SYSTEM_NAMESPACE} "
            "only to an exact identity")


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
            if permission.startswith(NAMESPACE_PLACEHOLDER + ":"):
                if identity.namespace not in namespaces:
                    continue
                permission = identity.namespace + permission[len(NAMESPACE_PLACEHOLDER):]
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
