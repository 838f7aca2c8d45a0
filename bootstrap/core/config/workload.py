"""The `workload_identity:` section: which issuers' subject tokens the token exchange takes, and the
bindings that grant Temporal permissions to the identities they name (the policy itself is
explained in core/workload_identity.py, which applies it)."""

from __future__ import annotations

import dataclasses
import re
import urllib.parse
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from ..permissions import NAMESPACE_ROLES, SYSTEM_NAMESPACE
from ...errors import BundleError
from .reader import Section, check_permission

ISSUER_TYPES = ("kubernetes", "oidc")
NAMESPACE_PLACEHOLDER = "{namespace}"
PATTERN = re.compile(r"^[A-Za-z0-9*?][A-Za-z0-9._:/@*?-]{0,252}$")
MIN_LIFETIME, MAX_LIFETIME = timedelta(minutes=1), timedelta(hours=1)
TOKEN_REVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"


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
    # kubernetes: ask the API server (TokenReview) whether the token still stands, so a deleted
    # pod's or service account's token is refused before it expires.
    token_review: bool = False  # parsed: on by default for kubernetes issuers with an auth_token_file
    token_review_url: str = ""  # default: the discovery URL's origin + TOKEN_REVIEW_PATH

    @property
    def discovery(self) -> str:
        return self.discovery_url or self.issuer.rstrip("/") + "/.well-known/openid-configuration"

    @property
    def reviews_tokens(self) -> bool:
        return self.type == "kubernetes" and self.token_review

    @property
    def token_review_endpoint(self) -> str:
        if self.token_review_url:
            return self.token_review_url
        parts = urllib.parse.urlsplit(self.discovery)
        return f"{parts.scheme}://{parts.netloc}{TOKEN_REVIEW_PATH}"


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


def parse_workload_identity(sec: Section, namespaces: tuple[str, ...]) -> WorkloadIdentityConfig:
    d = WorkloadIdentityConfig
    enabled = sec.boolean("enabled", bool(sec.data))
    issuers = tuple(_parse_issuer(Section(item, f"{sec.where}: issuers[{i}]")) for i, item in enumerate(sec.list("issuers")))
    default_bindings = sec.boolean("default_bindings", True)
    known = {ns for ns in namespaces} | {SYSTEM_NAMESPACE}
    explicit = tuple(_parse_binding(Section(item, f"{sec.where}: bindings[{i}]"), issuers, known)
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


def _parse_issuer(sec: Section) -> WorkloadIssuer:
    name = sec.string("name", "")
    if not re.match(r"^[a-z][a-z0-9-]{0,31}$", name):
        raise BundleError(f"{sec.where}: name {name!r}: lower-case letters, digits, '-'")
    issuer = WorkloadIssuer(
        name=name,
        type=sec.choice("type", "kubernetes", ISSUER_TYPES),
        issuer=sec.https_url("issuer", required=True, ipv6_hosts=False),
        audience=sec.string("audience", ""),
        discovery_url=sec.https_url("discovery_url", required=False, ipv6_hosts=False),
        jwks_uri=sec.https_url("jwks_uri", required=False, ipv6_hosts=False),
        ca_file=sec.file_path("ca_file", required=False),
        auth_token_file=sec.file_path("auth_token_file", required=False),
        require_pod_binding=sec.get("require_pod_binding", True),
        token_review=sec.get("token_review", None),
        token_review_url=sec.https_url("token_review_url", required=False, ipv6_hosts=False),
    )
    sec.done()
    if issuer.token_review is None:  # on wherever the exchange has a credential to ask with
        issuer = dataclasses.replace(issuer, token_review=issuer.type == "kubernetes" and bool(issuer.auth_token_file))
    if not isinstance(issuer.token_review, bool):
        raise BundleError(f"{sec.where}: token_review must be true or false")
    if issuer.token_review and issuer.type != "kubernetes":
        raise BundleError(f"{sec.where}: token_review is a Kubernetes API (type: kubernetes only)")
    if issuer.token_review and not issuer.auth_token_file:
        raise BundleError(f"{sec.where}: token_review needs auth_token_file (the exchange's own service-account "
                          "token, allowed to create tokenreviews), or token_review: false")
    if not issuer.audience:
        raise BundleError(f"{sec.where}: audience is required (the audience of the tokens the workloads present)")
    if not isinstance(issuer.require_pod_binding, bool):
        raise BundleError(f"{sec.where}: require_pod_binding must be true or false")
    return issuer


def _parse_binding(sec: Section, issuers: tuple[WorkloadIssuer, ...], known: set[str]) -> Binding:
    by_name = {i.name: i for i in issuers}
    named = sec.get("issuer", None)
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


def _pattern(sec: Section, key: str) -> str:
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
    check_permission(permission, known, where)
    if permission.startswith(SYSTEM_NAMESPACE + ":") and _is_wildcard(binding):
        raise BundleError(
            f"{where}: permission {permission!r} is bound through a wildcard; grant {SYSTEM_NAMESPACE} "
            "only to an exact identity")
