"""What the official Temporal Helm chart accepts and does with our values, as facts of its RELEASE
tagged `temporal-1.6.0` (server 1.31.2), never of its main branch.

Read from temporalio/helm-charts at that tag (tag object 61e98a8c, commit 9f4d328c; its
charts/temporal/Chart.yaml says version 1.6.0, appVersion 1.31.2) with
`git show temporal-1.6.0:charts/temporal/<file>`: values.yaml for the key paths, and
templates/server-configmap.yaml, server-deployment.yaml, server-job.yaml, admintools-deployment.yaml,
web-deployment.yaml and _helpers.tpl for what they do with them. Facts, not a copy of the chart.

That release has no server.tls.* and no web.tls (they came later, with PR #954 on main): the
server's TLS is server.config.tls alone, and its files reach the pods only through
server.additionalVolumes / server.additionalVolumeMounts, which every server Deployment gets alike.
"""

from __future__ import annotations

import copy

CHART_VERSION = "1.6.0"
CHART_TAG = "temporal-1.6.0"
SERVER_SERVICES = ("frontend", "internal-frontend", "history", "matching", "worker")

# Leaf key paths our values may set. Lists are leaves (the chart renders them with toYaml).
KEY_PATHS = {
    # _helpers.tpl's temporal.serviceAccountName: with create false, serviceAccountName of every pod.
    "serviceAccount.create", "serviceAccount.name",
    "server.image.repository", "server.image.tag",
    "server.additionalVolumes", "server.additionalVolumeMounts", "server.additionalEnv",
    "server.config.logLevel", "server.config.namespaces.create",
    "server.config.persistence.defaultStore", "server.config.persistence.visibilityStore",
    "server.config.persistence.numHistoryShards",
    "server.frontend.ingress.enabled", "server.frontend.ingress.hosts", "server.frontend.service.type",
    "server.frontend.service.httpPort", "server.internal-frontend.service.httpPort", "server.internal-frontend.enabled",
    "admintools.image.repository", "admintools.image.tag",
    "admintools.temporalAddress",  # values.yaml (commented) and admintools-deployment.yaml
    "admintools.additionalVolumes", "admintools.additionalVolumeMounts", "admintools.additionalEnv",
    "web.replicaCount", "web.image.repository", "web.image.tag",
    "web.temporalAddress",  # values.yaml (commented) and web-deployment.yaml: TEMPORAL_ADDRESS
    # Chart 1.6.0 has no web.tls (it came later): the client certificate goes in through these.
    "web.additionalVolumes", "web.additionalVolumeMounts", "web.additionalEnv",
}
# The pod securityContext (server.securityContext in server-deployment.yaml, admintools' and web's
# in their Deployments, schema's in server-job.yaml) and each container's
# (server.<service>.containerSecurityContext, admintools/web/schema.containerSecurityContext), all
# rendered with toYaml as they are.
POD_SECURITY = ("runAsNonRoot", "runAsUser", "runAsGroup", "fsGroup", "seccompProfile.type")
CONTAINER_SECURITY = ("allowPrivilegeEscalation", "capabilities.drop")
KEY_PATHS |= {f"{owner}.securityContext.{key}" for owner in ("server", "admintools", "web", "schema")
              for key in POD_SECURITY}
KEY_PATHS |= {f"{owner}.containerSecurityContext.{key}" for owner in ("admintools", "web", "schema")
              for key in CONTAINER_SECURITY}
# server-deployment.yaml reads server.<service>.replicaCount (default server.replicaCount).
KEY_PATHS |= {f"server.{svc}.{key}" for svc in SERVER_SERVICES
              for key in ("replicaCount", "service.port", "service.membershipPort",
                          *(f"containerSecurityContext.{c}" for c in CONTAINER_SECURITY))}
# Subtrees the chart passes to the server config (or dynamic config) as they are: their keys are
# the server's own, checked by configcheck on the composed config instead.
PASSTHROUGH = (
    "server.config.tls.", "server.config.authorization.", "server.config.clusterMetadata.",
    "server.config.persistence.datastores.", "server.dynamicConfig.",
)
# Keys the chart strips from each datastore before rendering (temporal.persistence.filterConfig).
HELM_ONLY_STORE_KEYS = ("existingSecret", "secretKey", "createDatabase", "manageSchema")


def leaf_paths(tree, prefix: str = "") -> list[str]:
    if not isinstance(tree, dict) or not tree:
        return [prefix[:-1]]
    paths = []
    for key, value in tree.items():
        paths += leaf_paths(value, f"{prefix}{key}.")
    return paths


def unknown_paths(values: dict) -> list[str]:
    return [p for p in leaf_paths(values) if p not in KEY_PATHS and not p.startswith(PASSTHROUGH)]


def server_config(values: dict, pod_ip: str = "10.0.0.7") -> dict:
    """The config templates/server-configmap.yaml renders (after the server's own env templating).
    global.tls is server.config.tls exactly as given (`with $server.config.tls` + toYaml), and is
    left out when that is empty; nothing else feeds it."""
    server, cfg = values["server"], values["server"]["config"]
    persistence = copy.deepcopy(cfg["persistence"])
    for store in persistence["datastores"].values():
        for kind in ("sql", "cassandra", "elasticsearch"):
            if kind in store:
                store[kind] = {k: v for k, v in store[kind].items() if k not in HELM_ONLY_STORE_KEYS}
    services = {}
    for svc in SERVER_SERVICES:
        if svc == "internal-frontend" and not server[svc].get("enabled"):
            continue
        port = server[svc]["service"]
        rpc = {"grpcPort": port["port"], "membershipPort": port["membershipPort"], "bindOnIP": "0.0.0.0"}
        if svc in ("frontend", "internal-frontend"):
            rpc["httpPort"] = port["httpPort"]
        if svc == "worker":
            del rpc["grpcPort"]
        services[svc] = {"rpc": rpc}
    global_ = {
        "membership": {"name": "temporal", "maxJoinDuration": "30s", "broadcastAddress": pod_ip},
        "pprof": {"port": 7936},
        "metrics": {"tags": {"type": "frontend"}, "prometheus": {"timerType": "histogram", "listenAddress": "0.0.0.0:9090"}},
    }
    if cfg.get("tls"):
        global_["tls"] = copy.deepcopy(cfg["tls"])
    if cfg.get("authorization"):
        global_["authorization"] = copy.deepcopy(cfg["authorization"])
    return {
        "log": {"stdout": True, "level": cfg["logLevel"]},
        "persistence": persistence,
        "global": global_,
        "services": services,
        "clusterMetadata": cfg["clusterMetadata"],
        "dcRedirectionPolicy": {"policy": "noop", "toDC": ""},
        "archival": {"status": "disabled"},
        "dynamicConfigClient": {"filepath": "/etc/temporal/dynamic_config/dynamic_config.yaml", "pollInterval": "10s"},
    }


# Keys the chart's configmap always writes that server 1.31's config structs do not have (the
# server ignores them; configcheck, a strict decoder, does not). Fixed text of the chart, not ours.
CHART_FIXED_UNKNOWN = (("archival", "status"), ("dcRedirectionPolicy", "toDC"), ("global", "membership", "name"))


def without_chart_fixed_unknown(config: dict) -> dict:
    config = copy.deepcopy(config)
    for *parents, key in CHART_FIXED_UNKNOWN:
        node = config
        for parent in parents:
            node = node[parent]
        del node[key]
    return config


def server_mounts(values: dict) -> dict[str, tuple[str, frozenset[str] | None]]:
    """Mount path -> (Secret name, the keys projected or None for all), for every Secret mounted
    into the server pods: server-deployment.yaml writes server.additionalVolumes and
    server.additionalVolumeMounts as they are into every service's Deployment, and mounts nothing
    else of ours."""
    volumes = {v["name"]: v["secret"] for v in values["server"].get("additionalVolumes", []) if "secret" in v}
    mounts = {}
    for mount in values["server"].get("additionalVolumeMounts", []):
        secret = volumes.get(mount["name"])
        if secret is not None:
            items = secret.get("items")
            mounts[mount["mountPath"]] = (secret["secretName"], frozenset(i["key"] for i in items) if items else None)
    return mounts


def component_name(release: str, component: str) -> str:
    """_helpers.tpl's temporal.componentname, which names the chart's Services and Deployments:
    temporal.fullname (the release, with `-temporal` unless it holds the chart's name; cut at 63)
    cut to `62 - len(component)` characters, one trailing dash dropped (Go's trimSuffix), then
    `-<component>`. (Checked against `helm template` of the chart with releases of 4, 30 and 41
    characters.)"""
    full = (release if "temporal" in release else f"{release}-temporal")[:63].removesuffix("-")
    return f"{full[: 62 - len(component)].removesuffix('-')}-{component}"


def service_account(values: dict) -> str:
    """What every pod of the chart runs as: _helpers.tpl's temporal.serviceAccountName, for our
    serviceAccount.create false (the name given, else `default`)."""
    return values.get("serviceAccount", {}).get("name") or "default"


def web_deployment(values: dict, release: str = "temporal", namespace: str = "temporal") -> dict:
    """The Deployment templates/web-deployment.yaml (1.6.0) renders from the web values we set: env
    is TEMPORAL_ADDRESS (web.temporalAddress, else the frontend's Service) then additionalEnv as
    is, volumes and mounts the additional ones, the pod securityContext web.securityContext, the
    container's web.containerSecurityContext.
    Labels and probes as the chart writes them."""
    web = values["web"]
    labels = {"app.kubernetes.io/name": "temporal", "app.kubernetes.io/instance": release,
              "app.kubernetes.io/component": "web"}
    container = {
        "name": "temporal-web", "image": f"{web['image']['repository']}:{web['image']['tag']}",
        "imagePullPolicy": "IfNotPresent",
        "env": [{"name": "TEMPORAL_ADDRESS", "value": web.get("temporalAddress") or f"{release}-frontend.{namespace}.svc:7233"},
                *web.get("additionalEnv", [])],
        "livenessProbe": {"initialDelaySeconds": 10, "tcpSocket": {"port": "http"}},
        "readinessProbe": {"initialDelaySeconds": 10, "httpGet": {"path": "/healthz", "port": "http"}},
        "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
        "resources": {},
    }
    if web.get("additionalVolumeMounts"):
        container["volumeMounts"] = web["additionalVolumeMounts"]
    if web.get("containerSecurityContext"):
        container["securityContext"] = web["containerSecurityContext"]
    spec = {"serviceAccountName": service_account(values), "containers": [container]}
    if web.get("additionalVolumes"):
        spec["volumes"] = web["additionalVolumes"]
    if web.get("securityContext"):
        spec["securityContext"] = web["securityContext"]
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": f"{release}-web", "namespace": namespace, "labels": labels},
            "spec": {"replicas": web["replicaCount"], "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": spec}}}
