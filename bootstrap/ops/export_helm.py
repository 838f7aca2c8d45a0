"""export-helm: the same PKI, tokens and policy as data for the official Temporal Helm chart.

Pure apart from reading the bundle: returns {relative path: (bytes, mode)}. Every Secret holds what
one consumer needs and nothing else; the templates in templates/helm/ shape the text. Output depends
only on bundle.yaml and the files in the bundle, never on the clock, so a re-export is byte-equal.
"""

from __future__ import annotations

import base64
import json
from urllib.parse import urlsplit
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import jinja2
import yaml

from .. import __version__
from ..core.config import CLUSTER_INFO_KEY, UI_GATE_HOST, BundleConfig, K8S_NAME
from ..core.durations import go_duration
from ..core.security_model import LISTENERS, Listener
from ..core.verify_plan import least_role, policy_admits
from ..core.tls_guard import require_closed_tls
from ..errors import BundleError
from .kube_secrets import token_patches
from .oidc import client_secret_path, dex_config_path, issuer_ca_path
from .plan import codec_sans, recorded_shards
from .render import default_templates_dir, environment, render_all
from ..store import CERT_MODE, KEY_MODE, Layout, read_optional

# The chart version whose values.yaml and templates these values were written against.
CHART_VERSION = "1.6.0"
# The chart ships server 1.31.2; the cluster moved over runs the release compose pins
# (docker-compose.prod.yml): moving must never downgrade the server under its database.
TEMPORAL_VERSION = "1.32.2"
DEFAULT_IMAGES = {
    "server": f"temporalio/server:{TEMPORAL_VERSION}",
    "admintools": f"temporalio/admin-tools:{TEMPORAL_VERSION}",
    "ui": "temporalio/ui:2.58.1",
    "bundle": f"temporal-bundle:{__version__}",
    "dex": "dexidp/dex:v2.45.1",
}
# The Web UI's scopes with the embedded Dex (docker-compose.prod.yml's default).
DEX_SCOPES = ("openid", "profile", "email", "groups", "offline_access")
# Where the server pods mount their Secrets (server.additionalVolumeMounts) and other pods theirs.
TLS_MOUNT = "/etc/temporal/tls"
# Where the web pods mount their client certificate (chart 1.6.0 has no web.tls: additionalVolumes).
WEB_TLS_MOUNT = f"{TLS_MOUNT}/web"
ISSUER_CA_MOUNT = f"{TLS_MOUNT}/oidc-issuer"
SERVER_SERVICES = ("frontend", "internal-frontend", "history", "matching", "worker")
# The UI gate listens where the frontend does, as in compose; its Service is named like its
# certificate (plan.pki.ui_gate_sans), and the Web UI reaches the frontend only through it.
UI_GATE_PORT = 7233


@dataclass(frozen=True)
class Secret:
    name: str
    consumer: str  # what mounts it, said in an annotation
    type: str
    data: tuple[tuple[str, bytes], ...]
    # key -> bundle-relative path, for Secrets our own commands read from BUNDLE_DIR
    paths: tuple[tuple[str, str], ...] = ()

    def encoded(self) -> list[tuple[str, str]]:
        return [(key, base64.b64encode(value).decode()) for key, value in sorted(self.data)]


class _Reader:
    """Reads bundle files, failing with one clear error naming the first missing one."""

    def __init__(self, layout: Layout):
        self.layout = layout

    def file(self, path: Path) -> bytes:
        data = read_optional(path)
        if data is None:
            raise BundleError(f"{path} is missing; run generate-certs (and mint-tokens) before export-helm")
        return data

    def leaf(self, directory: str, name: str) -> tuple[bytes, bytes]:
        cert, key = self.layout.leaf(directory, name)
        return self.file(cert), self.file(key)

    def trust(self, domain: str) -> tuple[bytes, bytes, bytes]:
        return tuple(self.file(p) for p in self.layout.trust_files(domain))  # type: ignore[return-value]


def check_exportable(config: BundleConfig, layout: Layout) -> None:
    if config.persistence.driver != "postgres":
        raise BundleError(f"{config.source}: export-helm needs persistence.driver postgres (the chart runs no SQLite)")
    hosts = [("network.jwks_host", config.network.jwks_host), ("codec.host", config.codec.host)]
    if config.workload_identity.enabled:
        hosts.append(("workload_identity.host", config.workload_identity.host))
    for key, host in hosts:
        if not K8S_NAME.match(host):
            raise BundleError(f"{config.source}: {key} {host!r} must be a short name: it becomes a Kubernetes Service name")
    _check_shards(config, layout)
    if config.oidc.ui_login:
        _check_browser_urls(config)


def ui_url(config: BundleConfig) -> str:
    return config.kubernetes.ui_url or config.ui_url


def codec_url(config: BundleConfig) -> str:
    return config.kubernetes.codec_url or f"https://localhost:{config.codec.port}"


def _check_browser_urls(config: BundleConfig) -> None:
    """The browser calls the codec server itself: from the UI's origin (CORS), by a name in the
    codec server's certificate."""
    where = f"{config.source}: kubernetes"
    if ui_url(config) not in config.codec.ui_origins:
        raise BundleError(f"{where}: the UI's origin {ui_url(config)} is not in codec.ui_origins; the browser's "
                          "codec calls would fail CORS (add it there)")
    host = urlsplit(codec_url(config)).hostname
    if host not in codec_sans(config):
        raise BundleError(f"{where}: codec_url host {host!r} is not in the codec server's certificate; add it to codec.sans")


def _check_shards(config: BundleConfig, layout: Layout) -> None:
    """The shard count cannot change once the database has data (the chart's default is 512)."""
    recorded = recorded_shards(layout)
    if recorded is not None and recorded != config.persistence.num_history_shards:
        raise BundleError(
            f"{config.source}: persistence.num_history_shards is {config.persistence.num_history_shards} but the "
            f"cluster's database was created with {recorded}; it cannot change"
        )


def names(config: BundleConfig) -> dict[str, str]:
    prefix = f"{config.kubernetes.release}-bundle"
    return {
        "prefix": prefix,
        "fullname": _fullname(config.kubernetes.release),
        "frontend_tls": f"{prefix}-frontend-tls",
        "internode_tls": f"{prefix}-internode-tls",
        "database": f"{prefix}-database-client",
        "postgres": f"{prefix}-postgres-server",
        "web": f"{prefix}-web",
        "admintools": f"{prefix}-admintools",
        "registrar": f"{prefix}-registrar",
        "jwks": f"{prefix}-jwks",
        "codec": f"{prefix}-codec",
        "refresher": f"{prefix}-token-refresher",
        "config": f"{prefix}-config",
        "role": f"{prefix}-role",
        "exchange": f"{prefix}-token-exchange",
        "web_oidc": f"{prefix}-web-oidc",
        "dex": f"{prefix}-dex",
        "issuer_ca": f"{prefix}-oidc-issuer-ca",
        "ui_gate": f"{prefix}-ui-gate",
        "cluster_info": f"{prefix}-cluster-info",
        "verify": f"{prefix}-verify",
    }


def chart_service(release: str, component: str, headless: bool = False) -> str:
    """The chart's Service names (templates/server-service.yaml): `<fullname>-<component>` for the
    frontend and internal-frontend, `<fullname>-<component>-headless` (the pods' own IPs, every
    port) for each server service."""
    return f"{_fullname(release)}-{component}" + ("-headless" if headless else "")


def _fullname(release: str) -> str:
    # The chart's temporal.fullname: the release name alone when it contains the chart name.
    return release if "temporal" in release else f"{release}-temporal"


def secrets(config: BundleConfig, layout: Layout) -> list[Secret]:
    read, n = _Reader(layout), names(config)
    server_ca = read.trust("server")[0]
    result = _server_pod_secrets(config, read, n) + _workload_secrets(config, read, n, server_ca)
    with_token = not config.workload_identity.enabled  # else no Secret holds an application's token
    result += [_role_secret(read, f"{n['role']}-{role.name}", role.name, server_ca, with_token) for role in config.roles]
    if refresher_exported(config):
        result.append(_refresher_secret(read, layout, n["refresher"]))
    if config.workload_identity.enabled:
        result.append(_exchange_secret(read, n["exchange"], server_ca))
    return result + _oidc_secrets(config, read, n) + [_verify_secret(read, n["verify"])]


def _verify_secret(read: _Reader, name: str) -> Secret:
    """The verify Job's own files: the CA certificates it checks servers with, nothing private.
    It presents the least role's pair and token from that role's Secret (kept fresh by the
    refresher) and forges the rest itself; no CA key and no signing key ever reaches it."""
    layout = read.layout
    return _bundle_secret(name, "verify Job (the server and internode CA certificates; no key)", {
        _relative(layout, layout.trust_files(domain)[0]): read.trust(domain)[0] for domain in ("server", "internode")})


def _relative(layout: Layout, path: Path) -> str:
    return str(path.relative_to(layout.root))


def verify_role_items(config: BundleConfig, layout: Layout) -> tuple[str, list[dict]] | None:
    """(the role Secret, its items at the bundle paths verify reads) for the least role."""
    role = least_role(config)
    if role is None:
        return None
    cert, key = layout.leaf("clients", role)
    files = {f"{role}.pem": cert, f"{role}.key": key}
    if not config.workload_identity.enabled:  # else the role Secret holds no token
        files[f"{role}.jwt"] = layout.token(role)
    items = [{"key": k, "path": _relative(layout, path)} for k, path in sorted(files.items())]
    return f"{names(config)['role']}-{role}", items


def _oidc_secrets(config: BundleConfig, read: _Reader, n: dict[str, str]) -> list[Secret]:
    """The UI's OIDC client secret (for an env valueFrom, never inline in values.yaml) and, with
    the embedded Dex, Dex's own files: its config (the client secret, users' bcrypt hashes) and
    its TLS pair."""
    if not config.oidc.ui_login:
        return []
    layout = read.layout
    secret = read.file(client_secret_path(layout)).strip()
    result = [Secret(n["web_oidc"], "Web UI (TEMPORAL_AUTH_CLIENT_SECRET)", "Opaque", (("client-secret", secret),))]
    if config.oidc.enabled:
        cert, key = read.leaf("dex", "server")
        result.append(_bundle_secret(n["dex"], "Dex (its config: the UI's client secret and bcrypt hashes; its TLS pair)", {
            "dex/config.yaml": read.file(dex_config_path(layout)), "dex/server.pem": cert, "dex/server.key": key,
        }))
    return result


def issuer_ca_exported(config: BundleConfig) -> bool:
    return config.oidc.external is not None and bool(config.oidc.external.ca_file)


def refresher_exported(config: BundleConfig) -> bool:
    """With workload identity, workers get their tokens from the exchange: the bundle's signing
    key stays out of the cluster (tokens for admin-tools and the registration job are minted
    outside, as with token_minting: outside)."""
    return config.kubernetes.token_minting == "in-cluster" and not config.workload_identity.enabled


def _exchange_secret(read: _Reader, name: str, ca: bytes) -> Secret:
    cert, key = read.leaf("exchange", "server")
    return _bundle_secret(name, "token exchange (its TLS pair and the one signing key in the cluster)", {
        "exchange/server.pem": cert, "exchange/server.key": key,
        "exchange/signing.key": read.file(read.layout.exchange_signing_key), "trust/ca.pem": ca,
    })


def _server_pod_secrets(config: BundleConfig, read: _Reader, n: dict[str, str]) -> list[Secret]:
    """What the chart mounts into the Temporal server pods, and PostgreSQL's own certificate."""
    server_bundle, server_current, server_next = read.trust("server")
    _, client_current, client_next = read.trust("client")
    _, internode_current, internode_next = read.trust("internode")
    frontend_cert, frontend_key = read.leaf("server", "frontend")
    internode_cert, internode_key = read.leaf("server", "internode")
    tls = "kubernetes.io/tls"
    return [
        # tls.crt/tls.key, and one CA per file for the lists in server.config.tls (Temporal's hot
        # reload watches the first certificate of each file); server-ca.crt is SSL_CERT_FILE.
        Secret(n["frontend_tls"], "Temporal server pods (server.config.tls.frontend)", tls, (
            ("tls.crt", frontend_cert), ("tls.key", frontend_key),
            ("client-current.crt", client_current), ("client-next.crt", client_next),
            ("server-ca.crt", server_bundle), ("server-current.crt", server_current), ("server-next.crt", server_next),
        )),
        Secret(n["internode_tls"], "Temporal server pods (server.config.tls.internode and systemWorker)", tls, (
            ("tls.crt", internode_cert), ("tls.key", internode_key),
            ("internode-current.crt", internode_current), ("internode-next.crt", internode_next),
        )),
        _tls_secret(n["database"], "Temporal server pods (PostgreSQL client)",
                    read.leaf("dbclient", config.persistence.user), server_bundle),
        _tls_secret(n["postgres"], "PostgreSQL server (verifies clients with the database CA)",
                    read.leaf("postgres", "server"), read.trust("database")[0]),
    ]


def _workload_secrets(config: BundleConfig, read: _Reader, n: dict[str, str], server_ca: bytes) -> list[Secret]:
    layout = read.layout
    registrar, jwks, codec = read.leaf("registrar", "system"), read.leaf("jwks", "server"), read.leaf("codec", "server")
    gate_server, gate_client = read.leaf("ui-gate", "server"), read.leaf("ui-gate", "client")
    return [
        _tls_secret(n["web"], "Web UI (web.additionalVolumes)", read.leaf("ui", "client"), server_ca),
        _admintools_secret(read, n["admintools"], server_ca),
        _bundle_secret(n["registrar"], "namespace registration Job", {
            "registrar/system.pem": registrar[0], "registrar/system.key": registrar[1],
            "registrar/system.jwt": read.file(layout.registrar_token), "trust/ca.pem": server_ca,
        }),
        _bundle_secret(n["jwks"], "JWKS server", {
            "jwks/server.pem": jwks[0], "jwks/server.key": jwks[1], "jwks/jwks.json": read.file(layout.jwks),
        }),
        _bundle_secret(n["ui_gate"], "UI gate (its server and frontend-client pairs, no token)", {
            "ui-gate/server.pem": gate_server[0], "ui-gate/server.key": gate_server[1],
            "ui-gate/client.pem": gate_client[0], "ui-gate/client.key": gate_client[1],
            # Callers (the Web UI) prove a client-domain certificate; the frontend a server one.
            "trust/client/ca.pem": read.trust("client")[0], "trust/ca.pem": server_ca,
            **(_issuer_ca(read) if issuer_ca_exported(config) else {}),
        }),
        _bundle_secret(n["codec"], "codec server", {
            "codec/server.pem": codec[0], "codec/server.key": codec[1],
            "codec-keys/keys.json": read.file(layout.codec_keys), "trust/ca.pem": server_ca,
            **_codec_kek(layout), **(_issuer_ca(read) if issuer_ca_exported(config) else {}),
        }),
    ]


def _issuer_ca(read: "_Reader") -> dict[str, bytes]:
    """An external issuer's private CA: the codec server fetches the issuer's keys with it."""
    return {"trust/oidc-issuer/ca.pem": read.file(issuer_ca_path(read.layout))}


def _codec_kek(layout) -> dict[str, bytes]:
    """The file backend's KEK rides with the codec server (the only pod that unwraps data keys);
    under pkcs11 it stays in the token and the pod reaches the token instead."""
    data = read_optional(layout.codec_kek)
    return {"codec-kek/kek.key": data} if data is not None else {}


def _tls_secret(name: str, consumer: str, pair: tuple[bytes, bytes], ca: bytes) -> Secret:
    return Secret(name, consumer, "kubernetes.io/tls", (("tls.crt", pair[0]), ("tls.key", pair[1]), ("ca.crt", ca)))


def _admintools_secret(read: _Reader, name: str, ca: bytes) -> Secret:
    # A client-domain certificate and the system token: the frontend checks both. Never the
    # internode key, which would make admin-tools a system admin without a token.
    cert, key = read.leaf("clients", "system")
    data = (("tls.crt", cert), ("tls.key", key), ("ca.crt", ca), ("token", read.file(read.layout.token("system")).strip()))
    return Secret(name, "admin-tools (admintools.additionalVolumes)", "Opaque", data)


def _role_secret(read: _Reader, name: str, role: str, ca: bytes, with_token: bool = True) -> Secret:
    cert, key = read.leaf("clients", role)
    data = (("ca.pem", ca), (f"{role}.pem", cert), (f"{role}.key", key))
    if with_token:
        data += ((f"{role}.jwt", read.file(read.layout.token(role))),)
    return Secret(name, f"applications of role {role}", "Opaque", data)


def _refresher_secret(read: _Reader, layout: Layout, name: str) -> Secret:
    files = {"private/jwt/active": read.file(layout.active_kid), "jwks/jwks.json": read.file(layout.jwks)}
    for path in sorted(layout.signing_keys.glob("*.key")):
        files[f"private/jwt/{path.name}"] = read.file(path)
    return _bundle_secret(name, "token refresher (the only holder of the JWT signing key)", files)


def _bundle_secret(name: str, consumer: str, files: dict[str, bytes]) -> Secret:
    """Mounted back with `items` at the bundle-relative paths, so our own commands find their
    files where they always do (under BUNDLE_DIR)."""
    keys = {path: path.replace("/", "-") for path in files}
    return Secret(name, consumer, "Opaque", tuple((keys[p], d) for p, d in files.items()),
                  tuple(sorted((keys[p], p) for p in files)))


def bundle_items(secret: Secret) -> list[dict]:
    return [{"key": key, "path": path} for key, path in secret.paths]


# --------------------------------------------------------------------------- rendering


def context(config: BundleConfig, all_secrets: list[Secret], templates_dir: Path | None = None) -> dict:
    k8s, net = config.kubernetes, config.network
    offset = net.membership_port_offset
    ports = {
        "frontend": (net.frontend_port, net.frontend_http_port),
        "internal-frontend": (net.internal_frontend_port, net.internal_frontend_http_port),
        "history": (net.history_port, None),
        "matching": (net.matching_port, None),
        "worker": (net.worker_port, None),
    }
    by_name = {s.name: s for s in all_secrets}
    n = names(config)
    return {
        "chart_version": CHART_VERSION,
        "config": config,
        "k8s": k8s,
        "net": net,
        "db": config.persistence,
        "jwt": config.jwt,
        "codec": config.codec,
        "names": n,
        "ns": k8s.namespace,
        "images": {key: _split_image(k8s.image(key, default)) for key, default in DEFAULT_IMAGES.items()},
        "bundle_image": k8s.image("bundle", DEFAULT_IMAGES["bundle"]),
        "services": [
            {"name": s, "port": ports[s][0], "membership": ports[s][0] + offset, "http": ports[s][1],
             "replicas": k8s.replica_count(s)}
            for s in SERVER_SERVICES
        ],
        "tls_mount": TLS_MOUNT,
        "server_volumes": server_volumes(n),
        "jwks_url": config.jwks_url,
        "jwks_refresh_interval": go_duration(config.jwt.refresh_interval),
        "tls_refresh_interval": go_duration(config.tls_refresh_interval),
        "expiry_warning_window": go_duration(config.pki.renew_before),
        "expiry_error_window": go_duration(max(config.pki.renew_before / 4, timedelta(hours=1))),
        "items": {name: bundle_items(secret) for name, secret in by_name.items()},
        "token_minting": k8s.token_minting,
        "workload": config.workload_identity,
        "example_namespace": next((ns.name for ns in config.namespaces if K8S_NAME.match(ns.name)), "my-team"),
        "frontend_address": f"{_fullname(k8s.release)}-frontend.{k8s.namespace}.svc:{net.frontend_port}",
        "ui_gate": {"host": UI_GATE_HOST, "port": UI_GATE_PORT, "address": f"{UI_GATE_HOST}.{k8s.namespace}.svc:{UI_GATE_PORT}"},
        "cluster_info_key": CLUSTER_INFO_KEY,
        "role_secrets": [s for s in all_secrets if s.name.startswith(n["role"] + "-")],
        "bundle_yaml": _bundle_yaml(config),
        # The compose cluster's dynamic config, key for key: the same server policy in both.
        "dynamic_config": yaml.safe_load(render_all(config, templates_dir)["dynamic_config.yaml"]),
        # What the refresher patches (bootstrap/ops/kube_secrets.py token_patches names them the same way).
        "token_secrets": sorted(token_patches(n["prefix"], {r.name: b"" for r in config.roles})),
        **_oidc_context(config),
    }


def server_volumes(n: dict[str, str]) -> list[dict[str, str]]:
    """The Secrets every server pod mounts: chart 1.6.0 has only server-wide additionalVolumes."""
    return [
        {"name": "bundle-frontend-tls", "secret": n["frontend_tls"], "mount": f"{TLS_MOUNT}/frontend",
         "comment": "The frontend's pair, the client-domain CAs it admits, the server CAs."},
        {"name": "bundle-internode-tls", "secret": n["internode_tls"], "mount": f"{TLS_MOUNT}/internode",
         "comment": "The internode pair (server, client and system worker) and the internode CAs."},
        {"name": "bundle-database-client", "secret": n["database"], "mount": f"{TLS_MOUNT}/database",
         "comment": "The PostgreSQL client certificate (database trust domain), for both datastores."},
    ]


def composed_server_tls(values_yaml: bytes) -> dict:
    """The server config's TLS as chart 1.6.0 composes it from our values: its
    templates/server-configmap.yaml writes server.config.tls, as it is, under global.tls, and no
    other value reaches global.tls (server.tls.* exists only on the chart's unreleased main)."""
    try:
        values = yaml.safe_load(values_yaml)
    except yaml.YAMLError as exc:
        raise BundleError(f"template helm/values.yaml.j2 rendered invalid YAML: {' '.join(str(exc).split())}") from None
    server = values.get("server") if isinstance(values, dict) else None
    config = server.get("config") if isinstance(server, dict) else None
    tls = config.get("tls") if isinstance(config, dict) else None
    return {"global": {"tls": tls} if tls is not None else {}}


def _oidc_context(config: BundleConfig) -> dict:
    oidc = config.oidc
    external = oidc.external
    return {
        "oidc": oidc,
        "ui_login": oidc.ui_login,
        "login_issuer": oidc.login_issuer,
        "oidc_jwks_url": config.oidc_jwks_url,
        "permissions_claim": oidc.permissions_claim,
        "ui_url": ui_url(config),
        "codec_url": codec_url(config),
        "ui_scopes": ",".join(external.scopes if external else DEX_SCOPES),
        "use_id_token": bool(external and external.use_id_token),
        "issuer_ca": issuer_ca_exported(config),
        "web_tls_mount": WEB_TLS_MOUNT,
        "issuer_ca_mount": ISSUER_CA_MOUNT,
        "dex_image": config.kubernetes.image("dex", DEFAULT_IMAGES["dex"]),
    }


def _split_image(ref: str) -> dict:
    repository, _, tag = ref.rpartition(":")
    if not repository or "/" in tag:
        return {"repository": ref, "tag": "latest"}
    return {"repository": repository, "tag": tag}


MANIFESTS = {
    "manifests/bundle-config.yaml": "helm/bundle-config.yaml.j2",
    "manifests/jwks.yaml": "helm/jwks.yaml.j2",
    "manifests/codec-server.yaml": "helm/codec-server.yaml.j2",
    "manifests/register-namespaces-job.yaml": "helm/register-namespaces-job.yaml.j2",
    "manifests/ui-gate.yaml": "helm/ui-gate.yaml.j2",
    "manifests/network-policies.yaml": "helm/network-policies.yaml.j2",
}


def render_export(config: BundleConfig, layout: Layout, templates_dir: Path | None = None) -> dict[str, tuple[bytes, int]]:
    check_exportable(config, layout)
    all_secrets = secrets(config, layout)
    env = environment(templates_dir or default_templates_dir())
    env.filters["q"] = json.dumps  # a JSON string is a YAML string, quoted and escaped
    values = context(config, all_secrets, templates_dir)
    if issuer_ca_exported(config):
        values["issuer_ca_pem"] = _Reader(layout).file(issuer_ca_path(layout)).decode()
    outputs = {"values.yaml": ("helm/values.yaml.j2", CERT_MODE)}
    outputs.update({path: (template, CERT_MODE) for path, template in MANIFESTS.items()})
    if config.oidc.enabled:
        outputs["manifests/dex.yaml"] = ("helm/dex.yaml.j2", CERT_MODE)
    if issuer_ca_exported(config):
        outputs["manifests/oidc-issuer-ca.yaml"] = ("helm/oidc-issuer-ca.yaml.j2", CERT_MODE)
    if refresher_exported(config):
        outputs["manifests/token-refresher.yaml"] = ("helm/token-refresher.yaml.j2", CERT_MODE)
    if config.workload_identity.enabled:
        outputs["manifests/token-exchange.yaml"] = ("helm/token-exchange.yaml.j2", CERT_MODE)
        # Not under manifests/: an example for the application's namespace, never applied with ours.
        outputs["examples/workload-identity-worker.yaml"] = ("helm/workload-identity-worker.yaml.j2", CERT_MODE)
    rendered = {path: (_render(env, template, values), mode) for path, (template, mode) in outputs.items()}
    # The Job's routes follow from what was just rendered: the Services and the NetworkPolicies.
    values["verify"] = {"routes": verify_routes(config, _manifest_docs(rendered)),
                        "role": verify_role_items(config, layout), "component": VERIFY_COMPONENT}
    rendered["manifests/verify-job.yaml"] = (_render(env, "helm/verify-job.yaml.j2", values), CERT_MODE)
    require_closed_tls(composed_server_tls(rendered["values.yaml"][0]), f"values.yaml for chart {CHART_VERSION}")
    for secret in all_secrets:
        rendered[f"secrets/{secret.name}.yaml"] = (
            _render(env, "helm/secret.yaml.j2", {**values, "secret": secret}), KEY_MODE)
    return rendered


# --------------------------------------------------------------------------- the verify Job's routes

VERIFY_COMPONENT = "verify"


def bundle_labels(release: str, component: str) -> dict[str, str]:
    """templates/helm/_pod.j2 labels(): our own workloads' pod labels."""
    return {"app.kubernetes.io/name": "temporal-bundle", "app.kubernetes.io/instance": release,
            "app.kubernetes.io/component": component}


def _server_component(listener: Listener) -> str:
    """frontend_port, frontend_http_port, history_port+membership, ... -> frontend, history, ..."""
    return listener.port.split("+")[0].removesuffix("_port").removesuffix("_http").replace("_", "-")


def _chart_placement(config: BundleConfig, listener: Listener) -> tuple[str, int, dict[str, str]] | None:
    component = _server_component(listener)
    if component not in SERVER_SERVICES:
        return None  # the metrics listener: the chart serves its own metrics port, not the bundle's
    release = config.kubernetes.release
    headless = "membership" in listener.port or component not in ("frontend", "internal-frontend")
    labels = {"app.kubernetes.io/name": "temporal", "app.kubernetes.io/instance": release,
              "app.kubernetes.io/component": component}
    port = listener.port_number(config.network)  # the chart's Services take the pods' own ports
    return f"{chart_service(release, component, headless)}:{port}", port, labels


def _own_placement(config: BundleConfig, listener: Listener, docs: list[dict]) -> tuple[str, int, dict[str, str]] | None:
    """The rendered Service in front of the listener's pods, and the port the pods listen on."""
    labels = bundle_labels(config.kubernetes.release, listener.service)
    pods = [d for d in docs if d.get("kind") == "Deployment" and d["spec"]["template"]["metadata"]["labels"] == labels]
    services = [d for d in docs if d.get("kind") == "Service" and d["spec"].get("selector") == labels]
    if not pods or not services:
        return None
    container_port = pods[0]["spec"]["template"]["spec"]["containers"][0]["ports"][0]
    service_port = next(p for p in services[0]["spec"]["ports"]
                        if p["targetPort"] in (container_port["name"], container_port["containerPort"]))
    return f"{services[0]['metadata']['name']}:{service_port['port']}", container_port["containerPort"], labels


def verify_routes(config: BundleConfig, docs: list[dict]) -> list[dict]:
    """Each listener the export runs: where the verify Job finds it (a Service name and port) and
    whether the rendered NetworkPolicies let the Job's pod reach it. Listeners the export does not
    run (PostgreSQL, the Web UI's chart-served HTTP, monitoring) have no route: verify says so."""
    policies = [d for d in docs if d.get("kind") == "NetworkPolicy"]
    source = bundle_labels(config.kubernetes.release, VERIFY_COMPONENT)
    routes = []
    for listener in LISTENERS:
        if listener.service == "temporal":
            place = _chart_placement(config, listener)
        elif listener.service == "temporal-ui":
            place = None  # chart 1.6.0's web Service: plain HTTP behind the operator's Ingress
        else:
            place = _own_placement(config, listener, docs)
        if place is not None:
            where, pod_port, labels = place
            reachable = policy_admits(policies, labels, pod_port, source)
            routes.append({"listener": listener.name, "where": where, "reachable": reachable,
                           "option": "--listener-host" if reachable else "--listener-blocked"})
    return routes


def _manifest_docs(rendered: dict[str, tuple[bytes, int]]) -> list[dict]:
    return [d for path, (text, _) in sorted(rendered.items()) if path.startswith("manifests/")
            for d in yaml.safe_load_all(text) if d]


def _bundle_yaml(config: BundleConfig) -> str:
    try:
        return Path(config.source).read_text(encoding="utf-8")
    except OSError as exc:
        raise BundleError(f"cannot read config {config.source}: {exc.strerror or exc}") from None


def _render(env: jinja2.Environment, template: str, values: dict) -> bytes:
    try:
        return env.get_template(template).render(values).encode()
    except jinja2.TemplateError as exc:
        raise BundleError(f"template {template}: {exc}") from None
