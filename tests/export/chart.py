"""What the official Temporal Helm chart 1.6.0 accepts and does with our values, as facts read from
its charts/temporal/values.yaml and templates (not a copy of them): the key paths it reads, and how
templates/server-configmap.yaml composes the server config from server.config and server.tls."""

from __future__ import annotations

import copy

CHART_VERSION = "1.6.0"
SERVER_SERVICES = ("frontend", "internal-frontend", "history", "matching", "worker")

# Leaf key paths our values may set. Lists are leaves (the chart renders them with toYaml).
KEY_PATHS = {
    "server.image.repository", "server.image.tag",
    "server.additionalVolumes", "server.additionalVolumeMounts", "server.additionalEnv",
    "server.config.logLevel", "server.config.namespaces.create",
    "server.config.persistence.defaultStore", "server.config.persistence.visibilityStore",
    "server.config.persistence.numHistoryShards",
    "server.frontend.ingress.enabled", "server.frontend.ingress.hosts", "server.frontend.service.type",
    "server.frontend.service.httpPort", "server.internal-frontend.service.httpPort", "server.internal-frontend.enabled",
    "admintools.image.repository", "admintools.image.tag", "admintools.useExternalFrontend",
    "admintools.temporalAddress",  # values.yaml (commented) and admintools-deployment.yaml
    "admintools.securityContext.runAsNonRoot", "admintools.securityContext.runAsUser",
    "admintools.securityContext.runAsGroup", "admintools.securityContext.fsGroup",
    "admintools.additionalVolumes", "admintools.additionalVolumeMounts", "admintools.additionalEnv",
    "web.replicaCount", "web.image.repository", "web.image.tag",
    "web.temporalAddress",  # values.yaml (commented) and web-deployment.yaml: TEMPORAL_ADDRESS
    # Chart 1.6.0 has no web.tls (it came later): the client certificate goes in through these.
    "web.additionalVolumes", "web.additionalVolumeMounts", "web.additionalEnv",
    "web.securityContext.runAsNonRoot", "web.securityContext.runAsUser", "web.securityContext.runAsGroup",
    "web.securityContext.fsGroup",
}
KEY_PATHS |= {f"server.tls.{section}.{key}" for section in ("internode", "frontend")
              for key in ("enabled", "secretName", "mountPath", "requireClientAuth", "serverName")}
# server-deployment.yaml reads server.<service>.replicaCount (default server.replicaCount).
KEY_PATHS |= {f"server.{svc}.{key}" for svc in SERVER_SERVICES
              for key in ("replicaCount", "service.port", "service.membershipPort")}
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


def merge_overwrite(base: dict, top: dict) -> dict:
    """sprig mergeOverwrite: maps merge key by key, anything else (lists too) is replaced."""
    result = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merge_overwrite(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def auto_tls(values: dict) -> dict:
    """templates/_helpers.tpl temporal.server.tls.config: the block server.tls generates."""
    raw = values["server"]["config"].get("tls", {})
    config = {}
    for section in ("internode", "frontend"):
        s = values["server"]["tls"][section]
        if not s.get("enabled"):
            continue
        require = s.get("requireClientAuth") or raw.get(section, {}).get("server", {}).get("requireClientAuth", False)
        server = {"certFile": f"{s['mountPath']}/tls.crt", "keyFile": f"{s['mountPath']}/tls.key", "requireClientAuth": require}
        if require:
            server["clientCaFiles"] = [f"{s['mountPath']}/ca.crt"]
        config[section] = {"server": server, "client": {"serverName": s["serverName"], "rootCaFiles": [f"{s['mountPath']}/ca.crt"]}}
    return config


def server_config(values: dict, pod_ip: str = "10.0.0.7") -> dict:
    """The config templates/server-configmap.yaml renders (after the server's own env templating)."""
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
        "tls": merge_overwrite(auto_tls(values), cfg.get("tls", {})),
    }
    if "authorization" in cfg:
        global_["authorization"] = cfg["authorization"]
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


def server_mounts(values: dict) -> dict[str, str]:
    """Mount path -> Secret name, for every Secret the chart mounts into the server pods."""
    mounts = {s["mountPath"]: s["secretName"] for s in values["server"]["tls"].values() if s.get("enabled")}
    volumes = {v["name"]: v["secret"]["secretName"] for v in values["server"].get("additionalVolumes", [])}
    for mount in values["server"].get("additionalVolumeMounts", []):
        mounts[mount["mountPath"]] = volumes[mount["name"]]
    return mounts


def web_deployment(values: dict, release: str = "temporal", namespace: str = "temporal") -> dict:
    """The Deployment templates/web-deployment.yaml (1.6.0) renders from the web values we set: env
    is TEMPORAL_ADDRESS then additionalEnv as is, volumes and mounts the additional ones, the pod
    securityContext web.securityContext. Labels and probes as the chart writes them."""
    web = values["web"]
    labels = {"app.kubernetes.io/name": "temporal", "app.kubernetes.io/instance": release,
              "app.kubernetes.io/component": "web"}
    container = {
        "name": "temporal-web", "image": f"{web['image']['repository']}:{web['image']['tag']}",
        "imagePullPolicy": "IfNotPresent",
        "env": [{"name": "TEMPORAL_ADDRESS", "value": f"{release}-frontend.{namespace}.svc:7233"}, *web.get("additionalEnv", [])],
        "livenessProbe": {"initialDelaySeconds": 10, "tcpSocket": {"port": "http"}},
        "readinessProbe": {"initialDelaySeconds": 10, "httpGet": {"path": "/healthz", "port": "http"}},
        "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
        "resources": {},
    }
    if web.get("additionalVolumeMounts"):
        container["volumeMounts"] = web["additionalVolumeMounts"]
    spec = {"containers": [container]}
    if web.get("additionalVolumes"):
        spec["volumes"] = web["additionalVolumes"]
    if web.get("securityContext"):
        spec["securityContext"] = web["securityContext"]
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": f"{release}-web", "namespace": namespace, "labels": labels},
            "spec": {"replicas": web["replicaCount"], "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": spec}}}
