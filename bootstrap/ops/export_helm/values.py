"""The values the templates in templates/helm/ are rendered with: images, ports, mounts, the
server policy, the Web UI's login."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import yaml

from ... import __version__
from ...core.config import CLUSTER_INFO_KEY, K8S_NAME, UI_GATE_HOST, BundleConfig
from ...core.durations import go_duration
from ...errors import BundleError
from ..kube_secrets import token_patches
from ..render import render_all
from .bundle_secrets import Secret, bundle_items, issuer_ca_exported
from .names import SERVER_SERVICES, chart_service, names

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
# The UI gate listens where the frontend does, as in compose; its Service is named like its
# certificate (plan.pki.ui_gate_sans), and the Web UI reaches the frontend only through it.
UI_GATE_PORT = 7233


def ui_url(config: BundleConfig) -> str:
    return config.kubernetes.ui_url or config.ui_url


def codec_url(config: BundleConfig) -> str:
    return config.kubernetes.codec_url or f"https://localhost:{config.codec.port}"


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
        "frontend_address": f"{chart_service(k8s.release, 'frontend')}.{k8s.namespace}.svc:{net.frontend_port}",
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


def _bundle_yaml(config: BundleConfig) -> str:
    try:
        return Path(config.source).read_text(encoding="utf-8")
    except OSError as exc:
        raise BundleError(f"cannot read config {config.source}: {exc.strerror or exc}") from None
