"""The operator's bundle.yaml, validated strictly into frozen dataclasses.

Everything that could make the Temporal server reject or misread our output is caught here, before
anything touches the disk: unknown keys, bad durations, invalid namespace names, permissions the
default claim mapper cannot parse, and roles the default authorizer would deny everything.

  reader.py    Section (strict keys) and the checks sections share: hosts, URLs, origins, paths
  sections.py  pki, jwt, network, persistence, keys, codec, kubernetes, monitoring
  oidc.py      Dex (users, groups, connectors) or an external issuer
  workload.py  workload_identity: issuers and bindings of the token exchange
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from ..claims import PERMISSIONS_CLAIM
from ..permissions import NAMESPACE_ROLES, SYSTEM_NAMESPACE
from ...errors import BundleError
from .oidc import (BCRYPT_HASH, EMAIL, OIDC_CONNECTOR_TYPES, OIDC_USER_NAME, ExternalIssuer, OIDCConfig, OIDCConnector,
                   OIDCUser, parse_oidc)
from .reader import DNS_NAME, IMAGE_REF, K8S_NAME, NAMESPACE_NAME, ROLE_NAME, Section, check_host, check_origin, check_permission
from .sections import (CLUSTER_INFO_KEY, CODEC_DECRYPT_ROLES, FRONTEND_EXPOSURES, JWT_ALGORITHMS, KEY_ALGORITHMS,
                       KUBERNETES_IMAGES, KUBERNETES_SERVICES, PERSISTENCE_DRIVERS, TOKEN_MINTING, UI_GATE_HOST,
                       CodecConfig, JWTConfig, KeysConfig, KubernetesConfig, MonitoringConfig, NetworkConfig,
                       PersistenceConfig, PKIConfig, parse_codec, parse_jwt, parse_keys, parse_kubernetes,
                       parse_monitoring, parse_network, parse_persistence, parse_pki)
from .workload import WorkloadIdentityConfig, parse_workload_identity
from .database_backup import DatabaseBackupConfig, parse_database_backup

__all__ = [
    "BCRYPT_HASH", "CLUSTER_INFO_KEY", "CODEC_DECRYPT_ROLES", "DNS_NAME", "EMAIL", "FRONTEND_EXPOSURES", "IMAGE_REF",
    "JWT_ALGORITHMS", "K8S_NAME", "KEY_ALGORITHMS", "KUBERNETES_IMAGES", "KUBERNETES_SERVICES", "NAMESPACE_NAME",
    "NAMESPACE_ROLES", "OIDC_CONNECTOR_TYPES", "OIDC_USER_NAME", "PERSISTENCE_DRIVERS", "ROLE_NAME", "SYSTEM_NAMESPACE",
    "TOKEN_MINTING", "UI_GATE_HOST",
    "BundleConfig", "CodecConfig", "ExternalIssuer", "JWTConfig", "KeysConfig", "KubernetesConfig", "MonitoringConfig",
    "Namespace", "NetworkConfig", "OIDCConfig", "OIDCConnector", "OIDCUser", "PKIConfig", "PersistenceConfig", "Role",
    "Section", "WorkloadIdentityConfig",
    "check_host", "check_origin", "check_permission", "default_roles", "load_config", "parse_config",
]


@dataclass(frozen=True)
class Namespace:
    name: str
    retention: timedelta
    description: str = ""


@dataclass(frozen=True)
class Role:
    name: str
    permissions: tuple[str, ...]
    token_lifetime: timedelta


@dataclass(frozen=True)
class BundleConfig:
    cluster_name: str
    namespaces: tuple[Namespace, ...]
    roles: tuple[Role, ...]
    pki: PKIConfig = field(default_factory=PKIConfig)
    jwt: JWTConfig = field(default_factory=JWTConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    persistence: PersistenceConfig = field(default_factory=PersistenceConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    keys: KeysConfig = field(default_factory=KeysConfig)
    oidc: OIDCConfig = field(default_factory=OIDCConfig)
    kubernetes: KubernetesConfig = field(default_factory=KubernetesConfig)
    workload_identity: WorkloadIdentityConfig = field(default_factory=WorkloadIdentityConfig)
    monitoring: MonitoringConfig = field(default_factory=MonitoringConfig)
    database_backup: DatabaseBackupConfig = field(default_factory=DatabaseBackupConfig)
    # Where the bundle directory is mounted as the Temporal server sees it (/bundle in compose).
    bundle_dir: str = "/bundle"
    source: str = "<defaults>"

    @property
    def tls_refresh_interval(self) -> timedelta:
        """How often the server re-reads cert files: rotation waits this long between phases."""
        return min(self.jwt.refresh_interval, timedelta(minutes=1))

    @property
    def jwks_url(self) -> str:
        return f"https://{self.network.jwks_host}:{self.network.jwks_port}/jwks.json"

    def role(self, name: str) -> Role:
        for role in self.roles:
            if role.name == name:
                return role
        known = ", ".join(r.name for r in self.roles)
        raise BundleError(f"unknown role {name!r} (configured roles: {known})")

    @property
    def ui_url(self) -> str:
        return f"https://{self.oidc.ui_public_host}:{self.network.ui_port}"

    @property
    def grafana_url(self) -> str:
        return f"https://{self.oidc.ui_public_host}:{self.network.grafana_port}"

    @property
    def dex_jwks_url(self) -> str:
        """Dex's keys as the server and the codec fetch them, inside the compose network."""
        return f"https://{self.oidc.host}:{self.oidc.port}/dex/keys"

    @property
    def oidc_jwks_url(self) -> str:
        """The login issuer's keys (Dex's, or the external issuer's jwks_uri); "" without UI login."""
        if self.oidc.external:
            return self.oidc.external.jwks_uri
        return self.dex_jwks_url if self.oidc.enabled else ""


# --------------------------------------------------------------------------- loading


def load_config(path: str | Path) -> BundleConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BundleError(f"cannot read config {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise BundleError(f"config {path}: invalid YAML{where}") from None
    return parse_config(data, source=str(path))


def parse_config(data: Any, source: str = "<config>") -> BundleConfig:
    top = Section(data if data is not None else {}, source)
    cluster = top.section("cluster")
    namespaces = _parse_namespaces(top.list("namespaces"), source)
    config = BundleConfig(
        cluster_name=cluster.string("name", "temporal"),
        namespaces=namespaces,
        roles=(),
        pki=parse_pki(top.section("pki")),
        jwt=parse_jwt(top.section("jwt")),
        network=parse_network(top.section("network"), cluster),
        persistence=parse_persistence(top.section("persistence")),
        bundle_dir=top.string("bundle_dir", "/bundle"),
        source=source,
    )
    cluster.done()
    roles = _parse_roles(top.section("roles"), namespaces, source)
    codec = parse_codec(top.section("codec"), config.network)
    oidc = parse_oidc(top.section("oidc"), {ns.name for ns in namespaces} | {SYSTEM_NAMESPACE}, config.network)
    kubernetes = parse_kubernetes(top.section("kubernetes"))
    keys = parse_keys(top.section("keys"))
    monitoring = parse_monitoring(top.section("monitoring"))
    database_backup = parse_database_backup(top.section("database_backup"))
    workload = parse_workload_identity(top.section("workload_identity"), tuple(n.name for n in namespaces))
    top.done()
    if oidc.external is not None and workload.enabled and oidc.permissions_claim != PERMISSIONS_CLAIM:
        raise BundleError(f"{source}: oidc.external.groups_claim {oidc.permissions_claim!r} with workload_identity: "
                          f"exchanged tokens carry '{PERMISSIONS_CLAIM}' only; use groups_claim: {PERMISSIONS_CLAIM}")
    if oidc.external is not None:
        config = replace(config, jwt=_audience_of_external(top.data.get("jwt"), config.jwt, oidc.external, source))
    if not config.bundle_dir.startswith("/"):
        raise BundleError(f"{source}: bundle_dir must be an absolute path, got {config.bundle_dir!r}")
    return replace(config, roles=roles, codec=codec, oidc=oidc, kubernetes=kubernetes, workload_identity=workload, keys=keys,
                   monitoring=monitoring, database_backup=database_backup)


def _audience_of_external(raw: Any, jwt: JWTConfig, external: ExternalIssuer, source: str) -> JWTConfig:
    """Temporal checks one audience, and the IdP sets `aud` to its client id: role tokens follow it."""
    given = raw.get("audience") if isinstance(raw, dict) else None
    if given is not None and given != external.client_id:
        raise BundleError(f"{source}: jwt.audience {given!r} differs from oidc.external.client_id "
                          f"{external.client_id!r}; the server checks one audience (drop jwt.audience)")
    return replace(jwt, audience=external.client_id)


# --------------------------------------------------------------------------- namespaces and roles


def _parse_namespaces(items: list, source: str) -> tuple[Namespace, ...]:
    if not items:
        items = [{"name": "default"}]
    namespaces, seen = [], set()
    for index, item in enumerate(items):
        sec = Section(item, f"{source}: namespaces[{index}]")
        name = sec.string("name", "")
        if not NAMESPACE_NAME.match(name) or name == SYSTEM_NAMESPACE:
            raise BundleError(
                f"{sec.where}: invalid namespace name {name!r} "
                "(letters, digits, '.', '_', '-'; at most 63; not 'temporal-system')"
            )
        if name in seen:
            raise BundleError(f"{sec.where}: namespace {name!r} is listed twice")
        seen.add(name)
        retention = sec.duration("retention", timedelta(days=7))
        if retention < timedelta(days=1):
            raise BundleError(f"{sec.where}: retention must be at least 1d (server minimum)")
        namespaces.append(Namespace(name, retention, sec.string("description", "")))
        sec.done()
    return tuple(namespaces)


def default_roles(namespaces: tuple[Namespace, ...]) -> dict[str, dict]:
    # Workers need <ns>:write: the default authorizer compares role bit flags and worker(1) is the
    # lowest, so a bare <ns>:worker grant is denied every API a worker calls.
    writes = [f"{ns.name}:write" for ns in namespaces]
    return {
        "system": {"permissions": [f"{SYSTEM_NAMESPACE}:admin"], "token_lifetime": "1h"},
        "worker": {"permissions": writes, "token_lifetime": "24h"},
        "client": {"permissions": writes, "token_lifetime": "24h"},
    }


def _parse_roles(sec: Section, namespaces: tuple[Namespace, ...], source: str) -> tuple[Role, ...]:
    raw = sec.data or default_roles(namespaces)
    sec.seen.update(raw)
    known = {ns.name for ns in namespaces} | {SYSTEM_NAMESPACE}
    roles = []
    for name, body in raw.items():
        where = f"{source}: roles: {name}"
        if not isinstance(name, str) or not ROLE_NAME.match(name):
            raise BundleError(f"{where}: invalid role name (lower-case letters, digits, '-')")
        body_sec = Section(body, where)
        permissions = tuple(check_permission(p, known, where) for p in body_sec.list("permissions"))
        if not permissions:
            raise BundleError(f"{where}: permissions must not be empty")
        if all(p.endswith(":worker") for p in permissions):
            raise BundleError(
                f"{where}: only '<ns>:worker' permissions, which the default authorizer denies for "
                "every API; grant '<ns>:write' to workers"
            )
        lifetime = body_sec.duration("token_lifetime", timedelta(hours=24))
        body_sec.done()
        roles.append(Role(name, permissions, lifetime))
    for required in ("system", "worker", "client"):
        if required not in raw:
            raise BundleError(f"{source}: roles: the {required!r} role is required")
    if f"{SYSTEM_NAMESPACE}:admin" not in roles[[r.name for r in roles].index("system")].permissions:
        raise BundleError(f"{source}: roles: system: must include '{SYSTEM_NAMESPACE}:admin'")
    return tuple(roles)
