"""The operator's bundle.yaml, validated strictly into frozen dataclasses.

Everything that could make the Temporal server reject or misread our output is caught here, before
anything touches the disk: unknown keys, bad durations, invalid namespace names, permissions the
default claim mapper cannot parse, and roles the default authorizer would deny everything.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from ..durations import parse_duration
from ..claims import PERMISSIONS_CLAIM
from ...errors import BundleError

SYSTEM_NAMESPACE = "temporal-system"
# The gRPC gate the Web UI calls instead of the frontend (its compose service and Kubernetes Service name).
UI_GATE_HOST = "ui-gate"
# The file of the cluster's GetClusterInfo answer the gate serves (written by register-namespaces),
# and the key of the ConfigMap that carries it in Kubernetes.
CLUSTER_INFO_KEY = "cluster.json"
# Upstream identity providers Dex may federate (Dex's connector type names).
OIDC_CONNECTOR_TYPES = ("github", "google", "oidc", "ldap")
BCRYPT_HASH = re.compile(r"^\$2[aby]\$(1[0-9]|2[0-9]|3[01])\$[./A-Za-z0-9]{53}$")
OIDC_USER_NAME = re.compile(r"^[a-z][a-z0-9._-]{0,63}$")
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
NAMESPACE_ROLES = ("worker", "read", "write", "admin")
KEY_ALGORITHMS = ("ecdsa-p256", "rsa-2048", "rsa-3072", "rsa-4096")
JWT_ALGORITHMS = ("ES256", "RS256")
PERSISTENCE_DRIVERS = ("postgres", "sqlite")
# Services the Helm chart runs as Deployments of their own, each with a replica count.
KUBERNETES_SERVICES = ("frontend", "internal-frontend", "history", "matching", "worker", "web")
FRONTEND_EXPOSURES = ("clusterip", "loadbalancer", "ingress")
TOKEN_MINTING = ("in-cluster", "outside")
# Image overrides: the chart's server, admin-tools and UI images, and ours (JWKS, codec, jobs).
KUBERNETES_IMAGES = ("server", "admintools", "ui", "bundle", "dex")
# A Kubernetes object name or namespace (RFC 1123 label).
K8S_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
IMAGE_REF = re.compile(r"^[a-z0-9][a-z0-9._/:-]*(:[A-Za-z0-9_.-]+)?(@sha256:[0-9a-f]{64})?$")
# Roles the codec server may require for decrypting: a bare <ns>:worker grants nothing (see below).
CODEC_DECRYPT_ROLES = ("read", "write", "admin")
# Temporal accepts almost anything, but ':' would break the "<ns>:<role>" claim format and names
# that are not DNS-ish break CLI quoting and metrics labels, so we hold the line here.
NAMESPACE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
ROLE_NAME = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
DNS_NAME = re.compile(r"^(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


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
class PKIConfig:
    key_algorithm: str = "ecdsa-p256"
    ca_common_name: str = "Temporal Bundle CA"
    organization: str = "Temporal Bundle"
    ca_lifetime: timedelta = timedelta(days=3650)
    leaf_lifetime: timedelta = timedelta(days=90)
    renew_before: timedelta = timedelta(days=30)


@dataclass(frozen=True)
class JWTConfig:
    algorithm: str = "ES256"
    issuer: str = "temporal-bundle"
    audience: str = "temporal"
    refresh_interval: timedelta = timedelta(minutes=1)


@dataclass(frozen=True)
class NetworkConfig:
    frontend_host: str = "temporal"
    frontend_sans: tuple[str, ...] = ()
    internode_server_name: str = "internode.temporal.internal"
    bind_ip: str = "0.0.0.0"  # the frontend (gRPC, HTTP, its membership port)
    # Every other listener (internal-frontend, history, matching, worker, their membership ports,
    # metrics) binds here: loopback, since one container runs every service.
    internal_bind_ip: str = "127.0.0.1"
    broadcast_address: str = "127.0.0.1"
    frontend_port: int = 7233
    frontend_http_port: int = 7243
    internal_frontend_port: int = 7236
    internal_frontend_http_port: int = 7246
    history_port: int = 7234
    matching_port: int = 7235
    worker_port: int = 7239
    membership_port_offset: int = -300
    metrics_port: int = 8000
    # The metrics listener's host, if not internal_bind_ip: in compose a name only the monitoring
    # network resolves (the server binds that network's address alone), so Prometheus can scrape
    # it and no application network can.
    metrics_host: str = ""

    @property
    def metrics_listen_host(self) -> str:
        return self.metrics_host or self.internal_bind_ip
    jwks_host: str = "jwks"
    jwks_port: int = 8443
    jwks_sans: tuple[str, ...] = ()
    ui_host: str = "temporal-ui"
    ui_port: int = 8080
    # Grafana (compose profile monitoring): published like the UI, logged in through Dex.
    grafana_host: str = "grafana"
    grafana_port: int = 3000


@dataclass(frozen=True)
class PersistenceConfig:
    driver: str = "postgres"
    host: str = "postgresql"
    port: int = 5432
    user: str = "temporal"
    database: str = "temporal"
    visibility_database: str = "temporal_visibility"
    sqlite_path: str = ""
    postgres_sans: tuple[str, ...] = ()
    # Fixed forever once the database has data: the production default leaves room to grow
    # (Temporal's Helm chart default too); tests set a small count where it does not matter.
    num_history_shards: int = 512


@dataclass(frozen=True)
class KeysConfig:
    """Where the CA keys, the JWT signing keys and the data keys' KEK live (backend.py)."""

    backend: str = "file"  # file | pkcs11
    module: str = ""  # pkcs11: path of the PKCS#11 library (SoftHSM2, an HSM's, a cloud KMS's)
    token_label: str = ""
    pin_file: str = ""  # the user PIN, read from this file (never from bundle.yaml)
    kek_label: str = "temporal-bundle-codec-kek"


@dataclass(frozen=True)
class CodecConfig:
    """The codec server: decrypts payloads for the Web UI and CLI, only for authorized tokens."""

    host: str = "codec-server"
    port: int = 8888
    sans: tuple[str, ...] = ()
    # A token must hold at least this role on the request's namespace (or temporal-system) to
    # see plaintext; any other valid token gets the payloads back still encrypted.
    decrypt_role: str = "admin"
    # Browser origins of the Web UI allowed by CORS. Empty: https://localhost:<ui_port>.
    ui_origins: tuple[str, ...] = ()


@dataclass(frozen=True)
class OIDCUser:
    username: str
    email: str
    groups: tuple[str, ...]  # names from OIDCConfig.groups
    password_hash: str = ""  # bcrypt; empty for the admin, whose hash the bootstrap generates


@dataclass(frozen=True)
class OIDCConnector:
    """An upstream identity provider for Dex. `config` is passed to Dex as is, except that each
    `<key>_file` entry is replaced by `<key>` with the file's content (secrets stay out of here)."""

    type: str
    id: str
    name: str
    config: tuple[tuple[str, Any], ...]
    secret_files: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ExternalIssuer:
    """A company IdP (Okta, Entra ID, Keycloak, Google...) in place of the embedded Dex. Its JWKS
    URL is given, not discovered: the bootstrap renders with no network (compose-env, --network
    none), and the server accepts only an http(s) key source it can fetch at start."""

    issuer: str
    jwks_uri: str
    client_id: str
    client_secret_file: str
    ca_file: str = ""  # a PEM the server, UI and codec trust for the issuer (a private CA)
    groups_claim: str = "groups"
    scopes: tuple[str, ...] = ("openid", "profile", "email")
    use_id_token: bool = False  # the UI sends the ID token (aud = client id) instead of the access token


@dataclass(frozen=True)
class OIDCConfig:
    """Dex, the Web UI's OIDC provider. The UI's client id is jwt.audience: Temporal checks one
    audience, and Dex sets `aud` to the client id, so role tokens and UI logins share it."""

    enabled: bool = True
    host: str = "auth.localhost"  # the issuer's host: the browser and the UI container both resolve it
    port: int = 5556
    ui_public_host: str = "localhost"  # where the browser opens the UI: https://<this>:<ui_port>
    token_lifetime: timedelta = timedelta(hours=1)
    admin: OIDCUser = OIDCUser("admin", "admin@example.com", ("admins",))
    groups: tuple[tuple[str, tuple[str, ...]], ...] = (("admins", ("temporal-system:admin",)),)
    users: tuple[OIDCUser, ...] = ()
    connectors: tuple[OIDCConnector, ...] = ()
    sans: tuple[str, ...] = ()
    external: ExternalIssuer | None = None  # only with enabled: false

    @property
    def issuer(self) -> str:
        return f"https://{self.host}:{self.port}/dex"

    @property
    def ui_login(self) -> bool:
        """The Web UI logs users in: through the embedded Dex or an external issuer."""
        return self.enabled or self.external is not None

    @property
    def login_issuer(self) -> str:
        return self.external.issuer if self.external else self.issuer

    @property
    def permissions_claim(self) -> str:
        return self.external.groups_claim if self.external else PERMISSIONS_CLAIM

    def permissions_of(self, user: OIDCUser) -> tuple[str, ...]:
        mapping = dict(self.groups)
        return tuple(dict.fromkeys(p for group in user.groups for p in mapping[group]))


@dataclass(frozen=True)
class KubernetesConfig:
    """Only export-helm reads this: where and how the cluster runs on Kubernetes."""

    namespace: str = "temporal"
    release: str = "temporal"  # the Helm release; the chart names its objects after it
    replicas: tuple[tuple[str, int], ...] = tuple((s, 1) for s in KUBERNETES_SERVICES)
    frontend_exposure: str = "clusterip"
    # in-cluster: the JWT signing key goes into the token refresher's Secret (and nowhere else);
    # outside: no Secret holds it, tokens are minted where the bundle lives and re-exported.
    token_minting: str = "in-cluster"
    images: tuple[tuple[str, str], ...] = ()
    # Where browsers open the Web UI and reach the codec server in the cluster (an ingress, a load
    # balancer, a port-forward). Empty: as in compose (https://<oidc.ui_public_host>:<ui_port>,
    # https://localhost:<codec.port>).
    ui_url: str = ""
    codec_url: str = ""

    def replica_count(self, service: str) -> int:
        return dict(self.replicas)[service]

    def image(self, name: str, default: str) -> str:
        return dict(self.images).get(name, default)


@dataclass(frozen=True)
class MonitoringConfig:
    """Thresholds shared by check-expiry and the Prometheus alert rules (one source, no drift)."""

    expiry_warn: timedelta = timedelta(days=7)
    expiry_crit: timedelta = timedelta(days=1)
    scrape_interval: timedelta = timedelta(seconds=30)
    frontend_error_ratio: float = 0.05  # errors / requests at the frontend, over 5 minutes
    persistence_latency_p99: timedelta = timedelta(seconds=1)


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
    workload_identity: Any = field(default_factory=lambda: _workload_identity().WorkloadIdentityConfig())
    monitoring: MonitoringConfig = field(default_factory=MonitoringConfig)
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
    top = _Section(data if data is not None else {}, source)
    cluster = top.section("cluster")
    namespaces = _parse_namespaces(top.list("namespaces"), source)
    config = BundleConfig(
        cluster_name=cluster.string("name", "temporal"),
        namespaces=namespaces,
        roles=(),
        pki=_parse_pki(top.section("pki")),
        jwt=_parse_jwt(top.section("jwt")),
        network=_parse_network(top.section("network"), cluster),
        persistence=_parse_persistence(top.section("persistence")),
        bundle_dir=top.string("bundle_dir", "/bundle"),
        source=source,
    )
    cluster.done()
    roles = _parse_roles(top.section("roles"), namespaces, source)
    codec = _parse_codec(top.section("codec"), config.network)
    oidc = _parse_oidc(top.section("oidc"), {ns.name for ns in namespaces} | {SYSTEM_NAMESPACE}, config.network)
    kubernetes = _parse_kubernetes(top.section("kubernetes"))
    keys = _parse_keys(top.section("keys"))
    monitoring = _parse_monitoring(top.section("monitoring"))
    workload = _workload_identity().parse_workload_identity(top.section("workload_identity"), tuple(n.name for n in namespaces))
    top.done()
    if oidc.external is not None and workload.enabled and oidc.permissions_claim != PERMISSIONS_CLAIM:
        raise BundleError(f"{source}: oidc.external.groups_claim {oidc.permissions_claim!r} with workload_identity: "
                          f"exchanged tokens carry '{PERMISSIONS_CLAIM}' only; use groups_claim: {PERMISSIONS_CLAIM}")
    if oidc.external is not None:
        config = replace(config, jwt=_audience_of_external(top.data.get("jwt"), config.jwt, oidc.external, source))
    if not config.bundle_dir.startswith("/"):
        raise BundleError(f"{source}: bundle_dir must be an absolute path, got {config.bundle_dir!r}")
    return replace(config, roles=roles, codec=codec, oidc=oidc, kubernetes=kubernetes, workload_identity=workload, keys=keys,
                   monitoring=monitoring)


def _audience_of_external(raw: Any, jwt: JWTConfig, external: ExternalIssuer, source: str) -> JWTConfig:
    """Temporal checks one audience, and the IdP sets `aud` to its client id: role tokens follow it."""
    given = raw.get("audience") if isinstance(raw, dict) else None
    if given is not None and given != external.client_id:
        raise BundleError(f"{source}: jwt.audience {given!r} differs from oidc.external.client_id "
                          f"{external.client_id!r}; the server checks one audience (drop jwt.audience)")
    return replace(jwt, audience=external.client_id)


def _workload_identity():
    from .. import workload_identity  # it builds on this module's parsers, so it is imported late

    return workload_identity


def _parse_keys(sec: "_Section") -> KeysConfig:
    backend = sec.choice("backend", "file", ("file", "pkcs11"))
    p11 = sec.section("pkcs11")
    keys = KeysConfig(backend, p11.string("module", ""), p11.string("token_label", ""), p11.string("pin_file", ""),
                      p11.string("kek_label", KeysConfig.kek_label))
    p11.done()
    sec.done()
    if backend == "pkcs11":
        for name in ("module", "token_label", "pin_file"):
            if not getattr(keys, name):
                raise BundleError(f"{sec.where}: pkcs11: {name} is required with backend: pkcs11")
        for name in ("module", "pin_file"):
            if not getattr(keys, name).startswith("/"):
                raise BundleError(f"{sec.where}: pkcs11: {name} must be an absolute path")
    return keys


class _Section:
    """A mapping read key by key; `done()` rejects whatever was not read (unknown keys)."""

    def __init__(self, data: Any, where: str):
        if not isinstance(data, dict):
            raise BundleError(f"{where}: expected a mapping, got {type(data).__name__}")
        self.data, self.where, self.seen = data, where, set()

    def _get(self, key: str, default: Any) -> Any:
        self.seen.add(key)
        value = self.data.get(key, default)
        return default if value is None else value

    def section(self, key: str) -> "_Section":
        return _Section(self._get(key, {}), f"{self.where}: {key}")

    def list(self, key: str) -> list:
        value = self._get(key, [])
        if not isinstance(value, list):
            raise BundleError(f"{self.where}: {key} must be a list")
        return value

    def string(self, key: str, default: str) -> str:
        value = self._get(key, default)
        if not isinstance(value, str):
            raise BundleError(f"{self.where}: {key} must be a string, got {value!r}")
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.string(key, default)
        if value not in choices:
            raise BundleError(f"{self.where}: {key} must be one of {', '.join(choices)}; got {value!r}")
        return value

    def duration(self, key: str, default: timedelta) -> timedelta:
        self.seen.add(key)
        if self.data.get(key) is None:
            return default
        return parse_duration(self.data[key], f"{self.where}: {key}")

    def port(self, key: str, default: int) -> int:
        value = self._get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
            raise BundleError(f"{self.where}: {key} must be a port number 1-65535, got {value!r}")
        return value

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value = self._get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise BundleError(f"{self.where}: {key} must be an integer {low}..{high}, got {value!r}")
        return value

    def names(self, key: str) -> tuple[str, ...]:
        values = self.list(key)
        for value in values:
            _check_host(value, f"{self.where}: {key}")
        return tuple(values)

    def host(self, key: str, default: str) -> str:
        value = self.string(key, default)
        _check_host(value, f"{self.where}: {key}")
        return value

    def optional_host(self, key: str) -> str:
        """A host name, or "" when the key is absent or null."""
        self.seen.add(key)
        return "" if self.data.get(key) is None else self.host(key, "")

    def done(self) -> None:
        unknown = sorted(str(k) for k in self.data if k not in self.seen)
        if unknown:
            raise BundleError(f"{self.where}: unknown key {unknown[0]!r}")


def _check_host(value: Any, where: str) -> None:
    if not isinstance(value, str):
        raise BundleError(f"{where}: expected a host name or IP address, got {value!r}")
    try:
        ipaddress.ip_address(value)
        return
    except ValueError:
        pass
    if not DNS_NAME.match(value) or len(value) > 253:
        raise BundleError(f"{where}: {value!r} is not a valid DNS name or IP address")


def _parse_pki(sec: _Section) -> PKIConfig:
    pki = PKIConfig(
        key_algorithm=sec.choice("key_algorithm", PKIConfig.key_algorithm, KEY_ALGORITHMS),
        ca_common_name=sec.string("ca_common_name", PKIConfig.ca_common_name),
        organization=sec.string("organization", PKIConfig.organization),
        ca_lifetime=sec.duration("ca_lifetime", PKIConfig.ca_lifetime),
        leaf_lifetime=sec.duration("leaf_lifetime", PKIConfig.leaf_lifetime),
        renew_before=sec.duration("renew_before", PKIConfig.renew_before),
    )
    sec.done()
    if pki.leaf_lifetime > pki.ca_lifetime:
        raise BundleError(f"{sec.where}: leaf_lifetime must not exceed ca_lifetime")
    if pki.renew_before >= pki.leaf_lifetime:
        raise BundleError(f"{sec.where}: renew_before must be shorter than leaf_lifetime")
    return pki


def _parse_jwt(sec: _Section) -> JWTConfig:
    jwt = JWTConfig(
        algorithm=sec.choice("algorithm", JWTConfig.algorithm, JWT_ALGORITHMS),
        issuer=sec.string("issuer", JWTConfig.issuer),
        audience=sec.string("audience", JWTConfig.audience),
        refresh_interval=sec.duration("refresh_interval", JWTConfig.refresh_interval),
    )
    sec.done()
    return jwt


def _parse_network(sec: _Section, cluster: _Section) -> NetworkConfig:
    d = NetworkConfig
    net = NetworkConfig(
        frontend_host=cluster.host("frontend_host", d.frontend_host),
        frontend_sans=cluster.names("frontend_sans"),
        internode_server_name=sec.host("internode_server_name", d.internode_server_name),
        bind_ip=sec.host("bind_ip", d.bind_ip),
        internal_bind_ip=sec.host("internal_bind_ip", d.internal_bind_ip),
        broadcast_address=sec.host("broadcast_address", d.broadcast_address),
        frontend_port=sec.port("frontend_port", d.frontend_port),
        frontend_http_port=sec.port("frontend_http_port", d.frontend_http_port),
        internal_frontend_port=sec.port("internal_frontend_port", d.internal_frontend_port),
        internal_frontend_http_port=sec.port("internal_frontend_http_port", d.internal_frontend_http_port),
        history_port=sec.port("history_port", d.history_port),
        matching_port=sec.port("matching_port", d.matching_port),
        worker_port=sec.port("worker_port", d.worker_port),
        membership_port_offset=sec.integer("membership_port_offset", d.membership_port_offset, -5000, 5000),
        metrics_port=sec.port("metrics_port", d.metrics_port),
        metrics_host=sec.optional_host("metrics_host"),
        jwks_host=sec.host("jwks_host", d.jwks_host),
        jwks_port=sec.port("jwks_port", d.jwks_port),
        jwks_sans=sec.names("jwks_sans"),
        ui_host=sec.host("ui_host", d.ui_host),
        ui_port=sec.port("ui_port", d.ui_port),
        grafana_host=sec.host("grafana_host", d.grafana_host),
        grafana_port=sec.port("grafana_port", d.grafana_port),
    )
    sec.done()
    _check_ports(net, sec.where)
    return net


def _check_ports(net: NetworkConfig, where: str) -> None:
    grpc = [net.frontend_port, net.internal_frontend_port, net.history_port, net.matching_port, net.worker_port]
    ports = grpc + [p + net.membership_port_offset for p in grpc]
    ports += [net.frontend_http_port, net.internal_frontend_http_port, net.metrics_port]
    if any(not 1 <= p <= 65535 for p in ports):
        raise BundleError(f"{where}: membership_port_offset moves a membership port out of 1-65535")
    duplicates = sorted({p for p in ports if ports.count(p) > 1})
    if duplicates:
        raise BundleError(f"{where}: port {duplicates[0]} is used by two Temporal listeners")


def _parse_monitoring(sec: _Section) -> MonitoringConfig:
    d = MonitoringConfig
    ratio = sec._get("frontend_error_ratio", d.frontend_error_ratio)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < 1:
        raise BundleError(f"{sec.where}: frontend_error_ratio must be a number between 0 and 1, got {ratio!r}")
    monitoring = MonitoringConfig(
        expiry_warn=sec.duration("expiry_warn", d.expiry_warn),
        expiry_crit=sec.duration("expiry_crit", d.expiry_crit),
        scrape_interval=sec.duration("scrape_interval", d.scrape_interval),
        frontend_error_ratio=float(ratio),
        persistence_latency_p99=sec.duration("persistence_latency_p99", d.persistence_latency_p99),
    )
    sec.done()
    if monitoring.expiry_crit > monitoring.expiry_warn:
        raise BundleError(f"{sec.where}: expiry_crit must not be longer than expiry_warn")
    if monitoring.scrape_interval < timedelta(seconds=1):
        raise BundleError(f"{sec.where}: scrape_interval must be at least 1s")
    return monitoring


def _parse_persistence(sec: _Section) -> PersistenceConfig:
    d = PersistenceConfig
    p = PersistenceConfig(
        driver=sec.choice("driver", d.driver, PERSISTENCE_DRIVERS),
        host=sec.host("host", d.host),
        port=sec.port("port", d.port),
        user=sec.string("user", d.user),
        database=sec.string("database", d.database),
        visibility_database=sec.string("visibility_database", d.visibility_database),
        sqlite_path=sec.string("sqlite_path", d.sqlite_path),
        postgres_sans=sec.names("postgres_sans"),
        num_history_shards=sec.integer("num_history_shards", d.num_history_shards, 1, 16384),
    )
    sec.done()
    if p.driver == "sqlite" and not p.sqlite_path:
        raise BundleError(f"{sec.where}: driver sqlite needs sqlite_path")
    for name in (p.database, p.visibility_database, p.user):
        if not re.match(r"^[a-z_][a-z0-9_]{0,62}$", name):
            raise BundleError(f"{sec.where}: {name!r} is not a valid PostgreSQL identifier")
    return p


def _parse_codec(sec: _Section, net: NetworkConfig) -> CodecConfig:
    d = CodecConfig
    codec = CodecConfig(
        host=sec.host("host", d.host),
        port=sec.port("port", d.port),
        sans=sec.names("sans"),
        decrypt_role=sec.choice("decrypt_role", d.decrypt_role, CODEC_DECRYPT_ROLES),
        ui_origins=tuple(check_origin(o, f"{sec.where}: ui_origins") for o in sec.list("ui_origins"))
        or (f"https://localhost:{net.ui_port}",),
    )
    sec.done()
    return codec


def _parse_kubernetes(sec: _Section) -> KubernetesConfig:
    d = KubernetesConfig
    replicas = sec.section("replicas")
    images = sec.section("images")
    k8s = KubernetesConfig(
        namespace=_k8s_name(sec, "namespace", d.namespace),
        release=_k8s_name(sec, "release", d.release),
        replicas=tuple((name, replicas.integer(name, 1, 1, 100)) for name in KUBERNETES_SERVICES),
        frontend_exposure=sec.choice("frontend_exposure", d.frontend_exposure, FRONTEND_EXPOSURES),
        token_minting=sec.choice("token_minting", d.token_minting, TOKEN_MINTING),
        images=tuple((name, _image(images, name)) for name in KUBERNETES_IMAGES if images.data.get(name) is not None),
        ui_url=_optional_origin(sec, "ui_url"),
        codec_url=_optional_origin(sec, "codec_url"),
    )
    replicas.done()
    images.done()
    sec.done()
    return k8s


def _optional_origin(sec: _Section, key: str) -> str:
    value = sec.string(key, "")
    return check_origin(value, f"{sec.where}: {key}") if value else ""


def _k8s_name(sec: _Section, key: str, default: str) -> str:
    value = sec.string(key, default)
    if not K8S_NAME.match(value):
        raise BundleError(f"{sec.where}: {key} {value!r} is not a Kubernetes name (lower-case letters, digits, '-'; at most 63)")
    return value


def _image(sec: _Section, key: str) -> str:
    value = sec.string(key, "")
    if not IMAGE_REF.match(value):
        raise BundleError(f"{sec.where}: {key} {value!r} is not an image reference like registry/name:tag")
    return value


def check_origin(value: Any, where: str) -> str:
    """A browser origin exactly as the Origin header carries it: scheme://host[:port], nothing else.
    https, or http for a loopback UI only (the browser then still talks https to the codec server)."""
    if not isinstance(value, str) or value != value.strip() or value.endswith("/"):
        raise BundleError(f"{where}: {value!r} is not an origin like https://temporal-ui.example.com")
    match = re.match(r"^(https?)://(\[[0-9a-fA-F:]+\]|[^/:@?#\[\]]+)(?::([0-9]{1,5}))?$", value)
    if not match:
        raise BundleError(f"{where}: {value!r} is not an origin like https://temporal-ui.example.com")
    scheme, host, port = match.groups()
    if "*" in host:
        raise BundleError(f"{where}: {value!r}: wildcards are not allowed; list each origin")
    _check_host(host.strip("[]"), where)
    if port is not None and not 1 <= int(port) <= 65535:
        raise BundleError(f"{where}: {value!r}: port must be 1-65535")
    if port is not None and int(port) == {"http": 80, "https": 443}[scheme]:
        raise BundleError(f"{where}: {value!r}: drop the default port, browsers omit it from Origin")
    if value != value.lower():
        raise BundleError(f"{where}: {value!r}: write origins in lower case, as browsers send them")
    if scheme == "http" and host not in ("localhost", "127.0.0.1", "[::1]"):
        raise BundleError(f"{where}: {value!r}: only a loopback UI may use http; use https")
    return value


def _parse_namespaces(items: list, source: str) -> tuple[Namespace, ...]:
    if not items:
        items = [{"name": "default"}]
    namespaces, seen = [], set()
    for index, item in enumerate(items):
        sec = _Section(item, f"{source}: namespaces[{index}]")
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


def _parse_roles(sec: _Section, namespaces: tuple[Namespace, ...], source: str) -> tuple[Role, ...]:
    raw = sec.data or default_roles(namespaces)
    sec.seen.update(raw)
    known = {ns.name for ns in namespaces} | {SYSTEM_NAMESPACE}
    roles = []
    for name, body in raw.items():
        where = f"{source}: roles: {name}"
        if not isinstance(name, str) or not ROLE_NAME.match(name):
            raise BundleError(f"{where}: invalid role name (lower-case letters, digits, '-')")
        body_sec = _Section(body, where)
        permissions = tuple(_check_permission(p, known, where) for p in body_sec.list("permissions"))
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


def _check_permission(permission: Any, known: set[str], where: str) -> str:
    if not isinstance(permission, str) or permission.count(":") != 1:
        raise BundleError(f"{where}: permission {permission!r} is not '<namespace>:<role>'")
    namespace, role = permission.split(":")
    if role not in NAMESPACE_ROLES:
        raise BundleError(f"{where}: permission {permission!r}: role must be one of {', '.join(NAMESPACE_ROLES)}")
    if namespace == "system":
        raise BundleError(f"{where}: permission {permission!r}: the cluster scope is 'temporal-system', not 'system'")
    if namespace not in known:
        raise BundleError(f"{where}: permission {permission!r} names namespace {namespace!r}, which is not configured")
    return permission


# --------------------------------------------------------------------------- oidc (Dex)


def _parse_oidc(sec: _Section, namespaces: set[str], net: NetworkConfig) -> OIDCConfig:
    d = OIDCConfig
    enabled = sec._get("enabled", True)
    if not isinstance(enabled, bool):
        raise BundleError(f"{sec.where}: enabled must be true or false")
    sec.seen.add("external")
    external = _parse_external(sec) if sec.data.get("external") is not None else None
    if external is not None and enabled:
        raise BundleError(f"{sec.where}: external needs enabled: false (the embedded Dex and an external issuer "
                          "exclude each other)")
    groups = _parse_oidc_groups(sec.section("groups"), namespaces) if "groups" in sec.data else d.groups
    oidc = OIDCConfig(
        enabled=enabled,
        host=sec.host("host", d.host),
        port=sec.port("port", d.port),
        ui_public_host=sec.host("ui_public_host", d.ui_public_host),
        token_lifetime=sec.duration("token_lifetime", d.token_lifetime),
        admin=_parse_oidc_user(sec.section("admin"), admin=True) if "admin" in sec.data else d.admin,
        groups=groups,
        users=tuple(_parse_oidc_user(_Section(u, f"{sec.where}: users[{i}]")) for i, u in enumerate(sec.list("users"))),
        connectors=tuple(_parse_connector(_Section(c, f"{sec.where}: connectors[{i}]"))
                         for i, c in enumerate(sec.list("connectors"))),
        sans=sec.names("sans"),
        external=external,
    )
    sec.seen.add("groups")
    sec.done()
    if external is None:
        _check_oidc(oidc, sec.where, net)
    return oidc


# Keys that configure the embedded Dex: meaningless (so refused) next to an external issuer.
DEX_ONLY_KEYS = ("host", "port", "token_lifetime", "admin", "groups", "users", "connectors", "sans")
# Registered JWT claims: never a permissions claim.
REGISTERED_CLAIMS = ("iss", "sub", "aud", "exp", "nbf", "iat", "jti", "azp", "nonce")
CLAIM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:/-]{0,127}$")


def _parse_external(oidc: _Section) -> ExternalIssuer:
    for key in DEX_ONLY_KEYS:
        if oidc.data.get(key) is not None:
            raise BundleError(f"{oidc.where}: {key} configures the embedded Dex; with external, users and groups "
                              "live in your identity provider")
    sec = oidc.section("external")
    use_id_token = sec._get("use_id_token", False)
    if not isinstance(use_id_token, bool):
        raise BundleError(f"{sec.where}: use_id_token must be true or false")
    scopes = tuple(sec.list("scopes")) or ExternalIssuer.scopes
    external = ExternalIssuer(
        issuer=_https_url(sec, "issuer"),
        jwks_uri=_https_url(sec, "jwks_uri"),
        client_id=sec.string("client_id", ""),
        client_secret_file=_absolute_file(sec, "client_secret_file", required=True),
        ca_file=_absolute_file(sec, "ca_file", required=False),
        groups_claim=sec.string("groups_claim", ExternalIssuer.groups_claim),
        scopes=scopes,
        use_id_token=use_id_token,
    )
    sec.done()
    if not external.client_id or external.client_id != external.client_id.strip() or "," in external.client_id:
        raise BundleError(f"{sec.where}: client_id is required (the OIDC client id your identity provider gave the UI)")
    if not CLAIM_NAME.match(external.groups_claim) or external.groups_claim in REGISTERED_CLAIMS:
        raise BundleError(f"{sec.where}: groups_claim {external.groups_claim!r} is not a claim name for permissions")
    if any(not isinstance(s, str) or not re.match(r"^[!#-\[\]-~]+$", s) for s in scopes) or "openid" not in scopes:
        raise BundleError(f"{sec.where}: scopes must be a list of scope names including 'openid', got {list(scopes)!r}")
    return external


def _https_url(sec: _Section, key: str) -> str:
    value = sec.string(key, "")
    match = re.match(r"^https://(\[[0-9a-fA-F:]+\]|[^/:@?#\[\]]+)(:[0-9]{1,5})?(/[^?#\s]*)?$", value)
    if not value:
        raise BundleError(f"{sec.where}: {key} is required (an https URL)")
    if not match:
        raise BundleError(f"{sec.where}: {key} must be an https URL without query or fragment, got {value!r}")
    _check_host(match.group(1).strip("[]"), f"{sec.where}: {key}")
    return value


def _absolute_file(sec: _Section, key: str, required: bool) -> str:
    value = sec.string(key, "")
    if not value and not required:
        return ""
    if not value.startswith("/"):
        raise BundleError(f"{sec.where}: {key} must be the absolute path of a file the bootstrap can read, got {value!r}")
    return value


def _parse_oidc_groups(sec: _Section, namespaces: set[str]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    groups = []
    for name, permissions in sec.data.items():
        where = f"{sec.where}: {name}"
        if not isinstance(name, str) or not ROLE_NAME.match(name):
            raise BundleError(f"{where}: invalid group name (lower-case letters, digits, '-')")
        if not isinstance(permissions, list) or not permissions:
            raise BundleError(f"{where}: expected a non-empty list of '<namespace>:<role>' permissions")
        groups.append((name, tuple(_check_permission(p, namespaces, where) for p in permissions)))
        sec.seen.add(name)
    return tuple(groups)


def _parse_oidc_user(sec: _Section, admin: bool = False) -> OIDCUser:
    user = OIDCUser(
        username=sec.string("username", "admin" if admin else ""),
        email=sec.string("email", "admin@example.com" if admin else ""),
        groups=tuple(sec.list("groups") or (["admins"] if admin else [])),
        password_hash="" if admin else sec.string("password_hash", ""),
    )
    sec.done()
    if not all(isinstance(group, str) for group in user.groups):
        raise BundleError(f"{sec.where}: groups must be a list of group names, got {list(user.groups)!r}")
    if not OIDC_USER_NAME.match(user.username):
        raise BundleError(f"{sec.where}: username {user.username!r}: lower-case letters, digits, '.', '_', '-'")
    if not EMAIL.match(user.email):
        raise BundleError(f"{sec.where}: email {user.email!r} is not an e-mail address (Dex logs users in by it)")
    if not admin and not BCRYPT_HASH.match(user.password_hash):
        raise BundleError(f"{sec.where}: password_hash must be a bcrypt hash ($2b$...), never a password")
    return user


def _parse_connector(sec: _Section) -> OIDCConnector:
    kind = sec.choice("type", "", OIDC_CONNECTOR_TYPES)
    ident, name = sec.string("id", kind), sec.string("name", kind)
    body = sec.section("config")
    sec.done()
    config, files = [], []
    for key, value in body.data.items():
        if not isinstance(key, str):
            raise BundleError(f"{body.where}: keys must be strings")
        if key.endswith("_file"):
            if not isinstance(value, str) or not value.startswith("/"):
                raise BundleError(f"{body.where}: {key} must be an absolute path to a file holding the secret")
            files.append((key.removesuffix("_file"), value))
        elif re.search(r"secret|password", key, re.IGNORECASE):
            raise BundleError(f"{body.where}: {key}: secrets are read from files; use {key}_file: /path")
        else:
            config.append((key, value))
    if not OIDC_USER_NAME.match(ident):
        raise BundleError(f"{sec.where}: id {ident!r}: lower-case letters, digits, '.', '_', '-'")
    return OIDCConnector(kind, ident, name, tuple(config), tuple(files))


def _check_oidc(oidc: OIDCConfig, where: str, net: NetworkConfig) -> None:
    known = {name for name, _ in oidc.groups}
    users = (oidc.admin, *oidc.users)
    for user in users:
        for group in user.groups:
            if group not in known:
                raise BundleError(f"{where}: user {user.username!r}: group {group!r} is not defined in oidc.groups")
    for attr in ("username", "email"):
        values = [getattr(u, attr) for u in users]
        if len(set(values)) != len(values):
            raise BundleError(f"{where}: two users share the {attr} {sorted(v for v in values if values.count(v) > 1)[0]!r}")
    if f"{SYSTEM_NAMESPACE}:read" not in _implied(oidc.permissions_of(oidc.admin)):
        raise BundleError(f"{where}: admin: needs a group granting '{SYSTEM_NAMESPACE}:admin' (the UI lists namespaces with it)")
    ids = [c.id for c in oidc.connectors]
    if len(set(ids)) != len(ids) or "local" in ids:
        raise BundleError(f"{where}: connector ids must be unique and not 'local' (the built-in password login)")
    if oidc.port in (net.ui_port, net.frontend_port, net.grafana_port):
        raise BundleError(f"{where}: port {oidc.port} is already used by the UI, Grafana or the frontend")


def _implied(permissions: tuple[str, ...]) -> set[str]:
    """A permission also grants the lower roles on its scope (the authorizer compares bit flags)."""
    out = set()
    for permission in permissions:
        scope, role = permission.split(":")
        out |= {f"{scope}:{r}" for r in NAMESPACE_ROLES[: NAMESPACE_ROLES.index(role) + 1]}
    return out
