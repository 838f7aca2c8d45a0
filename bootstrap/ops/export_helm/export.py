"""export-helm's one entry: check the config can be exported, then render values.yaml, our own
manifests, the verify Job and one file per Secret."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

import jinja2
import yaml

from ...core.config import K8S_NAME, BundleConfig
from ...core.tls_guard import require_closed_tls
from ...errors import BundleError
from ...store import CERT_MODE, KEY_MODE, Layout
from ..oidc import issuer_ca_path
from ..plan import codec_sans, recorded_shards
from ..render import default_templates_dir, environment
from .bundle_secrets import BundleReader, exchange_exported, issuer_ca_exported, refresher_exported, secrets
from .names import longest_release
from .values import CHART_VERSION, codec_url, context, ui_url
from .verify_job import VERIFY_COMPONENT, verify_role_items, verify_routes


def check_exportable(config: BundleConfig, layout: Layout) -> None:
    if config.persistence.driver != "postgres":
        raise BundleError(f"{config.source}: export-helm needs persistence.driver postgres (the chart runs no SQLite)")
    hosts = [("network.jwks_host", config.network.jwks_host), ("codec.host", config.codec.host)]
    if exchange_exported(config):
        hosts.append(("workload_identity.host", config.workload_identity.host))
    for key, host in hosts:
        if not K8S_NAME.match(host):
            raise BundleError(f"{config.source}: {key} {host!r} must be a short name: it becomes a Kubernetes Service name")
    _check_namespace(config)
    _check_release(config)
    _check_shards(config, layout)
    if config.oidc.ui_login:
        _check_browser_urls(config)


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


def _check_namespace(config: BundleConfig) -> None:
    """The release's namespace must be its own: namespace.yaml enforces Pod Security `restricted`
    on every pod in it, which would refuse other workloads' pods (and Kubernetes' own in kube-*, a
    prefix Kubernetes reserves)."""
    name = config.kubernetes.namespace
    if name == "default" or name.startswith("kube-"):
        raise BundleError(f"{config.source}: kubernetes.namespace {name!r} is shared with other workloads; the "
                          "release needs a namespace of its own (namespace.yaml enforces Pod Security `restricted` "
                          "on every pod in it)")


def _check_release(config: BundleConfig) -> None:
    release = config.kubernetes.release
    longest = longest_release(release)
    if len(release) > longest:
        raise BundleError(
            f"{config.source}: kubernetes.release {release!r} is {len(release)} characters; chart {CHART_VERSION} "
            f"cuts the names it makes from a release over {longest}, and then its own references "
            "and ours miss its Services: choose a shorter release"
        )


def _check_shards(config: BundleConfig, layout: Layout) -> None:
    """The shard count cannot change once the database has data (the chart's default is 512)."""
    recorded = recorded_shards(layout)
    if recorded is not None and recorded != config.persistence.num_history_shards:
        raise BundleError(
            f"{config.source}: persistence.num_history_shards is {config.persistence.num_history_shards} but the "
            f"cluster's database was created with {recorded}; it cannot change"
        )


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


MANIFESTS = {
    "manifests/bundle-config.yaml": "helm/bundle-config.yaml.j2",
    "manifests/chart-service-account.yaml": "helm/chart-service-account.yaml.j2",
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
        values["issuer_ca_pem"] = BundleReader(layout).file(issuer_ca_path(layout)).decode()
    # namespace.yaml is applied first (Pod Security on before any pod), so not under manifests/.
    outputs = {"values.yaml": ("helm/values.yaml.j2", CERT_MODE), "namespace.yaml": ("helm/namespace.yaml.j2", CERT_MODE)}
    outputs.update({path: (template, CERT_MODE) for path, template in MANIFESTS.items()})
    if config.oidc.enabled:
        outputs["manifests/dex.yaml"] = ("helm/dex.yaml.j2", CERT_MODE)
    if issuer_ca_exported(config):
        outputs["manifests/oidc-issuer-ca.yaml"] = ("helm/oidc-issuer-ca.yaml.j2", CERT_MODE)
    if refresher_exported(config):
        outputs["manifests/token-refresher.yaml"] = ("helm/token-refresher.yaml.j2", CERT_MODE)
    if exchange_exported(config):
        outputs["manifests/token-exchange.yaml"] = ("helm/token-exchange.yaml.j2", CERT_MODE)
    if config.workload_identity.enabled:
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


def _manifest_docs(rendered: dict[str, tuple[bytes, int]]) -> list[dict]:
    return [d for path, (text, _) in sorted(rendered.items()) if path.startswith("manifests/")
            for d in yaml.safe_load_all(text) if d]


def _render(env: jinja2.Environment, template: str, values: dict) -> bytes:
    try:
        return env.get_template(template).render(values).encode()
    except jinja2.TemplateError as exc:
        raise BundleError(f"template {template}: {exc}") from None
