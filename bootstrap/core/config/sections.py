"""The plain sections of bundle.yaml: pki, jwt, network, persistence, keys, codec, kubernetes and
monitoring, each a frozen dataclass and its parser."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

from ..permissions import NAMESPACE_ROLES
from ...errors import BundleError
from .reader import IMAGE_REF, K8S_NAME, Section, check_origin

# The gRPC gate the Web UI calls instead of the frontend (its compose service and Kubernetes Service name).
UI_GATE_HOST = "ui-gate"
# The file of the cluster's GetClusterInfo answer the gate serves (written by register-namespaces),
# and the key of the ConfigMap that carries it in Kubernetes.
CLUSTER_INFO_KEY = "cluster.json"
KEY_ALGORITHMS = ("ecdsa-p256", "rsa-2048", "rsa-3072", "rsa-4096")
JWT_ALGORITHMS = ("ES256", "RS256")
PERSISTENCE_DRIVERS = ("postgres", "sqlite")
# Services the Helm chart runs as Deployments of their own, each with a replica count.
KUBERNETES_SERVICES = ("frontend", "internal-frontend", "history", "matching", "worker", "web")
FRONTEND_EXPOSURES = ("clusterip", "loadbalancer", "ingress")
TOKEN_MINTING = ("in-cluster", "outside")
# Image overrides: the chart's server, admin-tools and UI images, and ours (JWKS, codec, jobs).
KUBERNETES_IMAGES = ("server", "admintools", "ui", "bundle", "dex")
# Roles the codec server may require for decrypting: a bare <ns>:worker grants nothing (see default_roles).
CODEC_DECRYPT_ROLES = NAMESPACE_ROLES[NAMESPACE_ROLES.index("read"):]


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
    # Whether a temporal-system grant (write or admin) lets a token fetch any namespace's data keys
    # from the key service. Off: reading or administering the cluster is not custody of every
    # tenant's payloads; a worker needs write on its own namespace.
    system_may_fetch_keys: bool = False


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


# --------------------------------------------------------------------------- parsing


def parse_pki(sec: Section) -> PKIConfig:
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


def parse_jwt(sec: Section) -> JWTConfig:
    jwt = JWTConfig(
        algorithm=sec.choice("algorithm", JWTConfig.algorithm, JWT_ALGORITHMS),
        issuer=sec.string("issuer", JWTConfig.issuer),
        audience=sec.string("audience", JWTConfig.audience),
        refresh_interval=sec.duration("refresh_interval", JWTConfig.refresh_interval),
    )
    sec.done()
    return jwt


def parse_network(sec: Section, cluster: Section) -> NetworkConfig:
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


def parse_monitoring(sec: Section) -> MonitoringConfig:
    d = MonitoringConfig
    ratio = sec.get("frontend_error_ratio", d.frontend_error_ratio)
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


def parse_persistence(sec: Section) -> PersistenceConfig:
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


def parse_codec(sec: Section, net: NetworkConfig) -> CodecConfig:
    d = CodecConfig
    codec = CodecConfig(
        host=sec.host("host", d.host),
        port=sec.port("port", d.port),
        sans=sec.names("sans"),
        decrypt_role=sec.choice("decrypt_role", d.decrypt_role, CODEC_DECRYPT_ROLES),
        ui_origins=tuple(check_origin(o, f"{sec.where}: ui_origins") for o in sec.list("ui_origins"))
        or (f"https://localhost:{net.ui_port}",),
        system_may_fetch_keys=sec.boolean("system_may_fetch_keys", d.system_may_fetch_keys),
    )
    sec.done()
    return codec


def parse_kubernetes(sec: Section) -> KubernetesConfig:
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


def _optional_origin(sec: Section, key: str) -> str:
    value = sec.string(key, "")
    return check_origin(value, f"{sec.where}: {key}") if value else ""


def _k8s_name(sec: Section, key: str, default: str) -> str:
    value = sec.string(key, default)
    if not K8S_NAME.match(value):
        raise BundleError(f"{sec.where}: {key} {value!r} is not a Kubernetes name (lower-case letters, digits, '-'; at most 63)")
    return value


def _image(sec: Section, key: str) -> str:
    value = sec.string(key, "")
    if not IMAGE_REF.match(value):
        raise BundleError(f"{sec.where}: {key} {value!r} is not an image reference like registry/name:tag")
    return value


def parse_keys(sec: Section) -> KeysConfig:
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
