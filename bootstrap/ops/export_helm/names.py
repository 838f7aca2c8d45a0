"""The Kubernetes names an export uses: our own objects' (one prefix per release), and the
Temporal chart's Services and pod labels, which the export must match."""

from __future__ import annotations

from ...core.config import BundleConfig

SERVER_SERVICES = ("frontend", "internal-frontend", "history", "matching", "worker")


def names(config: BundleConfig) -> dict[str, str]:
    prefix = f"{config.kubernetes.release}-bundle"
    return {
        "prefix": prefix,
        "frontend": chart_service(config.kubernetes.release, "frontend"),
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
        "chart_account": f"{prefix}-chart-pods",
    }


def chart_service(release: str, component: str, headless: bool = False) -> str:
    """The chart's Service names (templates/server-service.yaml): `<fullname>-<component>` for the
    frontend and internal-frontend, `<fullname>-<component>-headless` (the pods' own IPs, every
    port) for each server service."""
    return f"{fullname(release)}-{component}" + ("-headless" if headless else "")


def fullname(release: str) -> str:
    # The chart's temporal.fullname: the release name alone when it contains the chart name.
    return release if "temporal" in release else f"{release}-temporal"


# Chart 1.6.0's temporal.componentname cuts the full name so that `<fullname>-<component>` fits a
# DNS label (63), while some of its own references (the ingress's backend, its namespace Job's
# address) and ours keep the whole name: past this length they name Services that do not exist.
LONGEST_FULLNAME = 63 - len(chart_service("", "internal-frontend", headless=True)) + len(fullname(""))


def longest_release(release: str) -> int:
    """The longest release of this one's kind (with the chart's name in it, or without) whose
    names the chart keeps whole."""
    return LONGEST_FULLNAME - len(fullname(release)) + len(release)


def bundle_labels(release: str, component: str) -> dict[str, str]:
    """templates/helm/_pod.j2 labels(): our own workloads' pod labels."""
    return {"app.kubernetes.io/name": "temporal-bundle", "app.kubernetes.io/instance": release,
            "app.kubernetes.io/component": component}
