"""The verify Job: the role Secret it presents, and the route to each listener the export runs
(a Service name and port, and whether the rendered NetworkPolicies let the Job's pod reach it)."""

from __future__ import annotations

from ...core.config import BundleConfig
from ...core.security_model import LISTENERS, Listener
from ...core.verify_plan import least_role, policy_admits
from ...store import Layout
from .bundle_secrets import relative_path
from .names import SERVER_SERVICES, bundle_labels, chart_service, names

VERIFY_COMPONENT = "verify"


def verify_role_items(config: BundleConfig, layout: Layout) -> tuple[str, list[dict]] | None:
    """(the role Secret, its items at the bundle paths verify reads) for the least role."""
    role = least_role(config)
    if role is None:
        return None
    cert, key = layout.leaf("clients", role)
    files = {f"{role}.pem": cert, f"{role}.key": key}
    if not config.workload_identity.enabled:  # else the role Secret holds no token
        files[f"{role}.jwt"] = layout.token(role)
    items = [{"key": k, "path": relative_path(layout, path)} for k, path in sorted(files.items())]
    return f"{names(config)['role']}-{role}", items


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
