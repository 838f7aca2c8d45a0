"""Temporal itself in the kube tier's cluster, installed as docs/kubernetes.md says, with no chart
(CI cannot download it): PostgreSQL as Install step 2 asks (a Service named like persistence.host,
the `...-postgres-server` Secret as its TLS files, compose's pg_hba.conf), the schema as compose's
temporal-schema job writes it, and the five server services from Deployments of our own that mount
the exported Secrets and the exported server config the way chart 1.6.0 does
(tests/support/chart.py: its configmap's config, its additionalVolumes, its Service names)."""

from __future__ import annotations

import secrets
from pathlib import Path

import yaml

from tests.support.chart import SERVER_SERVICES, server_config, service_account, web_deployment
from tests.support.kube_node import TOLERATION

REPO = Path(__file__).resolve().parents[2]
RELEASE = "temporal"  # the chart's fullname for release `temporal` (the export's default)
CONFIG_DIR = "/etc/temporal/config"
# The server renders its config file as a Go template when it says so in its first 1 KB
# (common/config/loader.go of server v1.32.2): how each pod gets its own broadcast address, as the
# chart's config template does with the pod's IP.
TEMPLATE_MARK = "# enable-template\n"
POD_IP = '{{ env "POD_IP" }}'


def chart_labels(component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "temporal", "app.kubernetes.io/instance": RELEASE,
            "app.kubernetes.io/component": component}


def _meta(name: str, namespace: str, labels: dict | None = None) -> dict:
    return {"name": name, "namespace": namespace, **({"labels": labels} if labels else {})}


# What Pod Security `restricted` asks of a container, which the export's namespace.yaml enforces.
RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def restricted_pod_security(user: int) -> dict:
    return {"runAsUser": user, "runAsGroup": user, "fsGroup": user, "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"}}


def holds_an_api_token(pod: dict) -> bool:
    """Whether the API server gave the pod a service-account token volume (kube-api-access-*)."""
    return any("serviceAccountToken" in source for volume in pod["spec"].get("volumes", [])
               for source in volume.get("projected", {}).get("sources", []))


def _pod_spec(containers: list, volumes: list, user: int, pod_security: dict | None = None,
              container_security: dict | None = None, **extra) -> dict:
    """A pod as `restricted` admits it: each container's securityContext container_security (or
    RESTRICTED_CONTAINER), the pod's pod_security (or restricted_pod_security(user))."""
    for container in containers:
        container["securityContext"] = container_security or RESTRICTED_CONTAINER
    return {"tolerations": [TOLERATION], "containers": containers, "volumes": volumes,
            "securityContext": pod_security or restricted_pod_security(user), **extra}


def _deployment(name: str, namespace: str, labels: dict, spec: dict, replicas: int = 1) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(name, namespace, labels),
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": spec}}}


def _service(name: str, namespace: str, labels: dict, ports: dict[str, int], headless: bool = False) -> dict:
    spec = {"selector": labels, "ports": [{"name": n, "port": p, "targetPort": p} for n, p in ports.items()]}
    if headless:
        spec["clusterIP"] = "None"
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(name, namespace, labels), "spec": spec}


def postgres(namespace: str, image: str, tls_secret: str, host: str = "postgresql") -> list[dict]:
    """PostgreSQL with TLS on and compose's pg_hba.conf (hostssl, certificate auth only), its
    certificate and client CA from the exported `...-postgres-server` Secret. The superuser's
    password is a random one the image needs to initialise; pg_hba.conf accepts it nowhere."""
    labels = {"app.kubernetes.io/name": "postgresql", "app.kubernetes.io/instance": RELEASE}
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta("postgresql-config", namespace),
              "data": {"pg_hba.conf": (REPO / "docker/postgres/pg_hba.conf").read_text(),
                       "10-temporal-role.sh": (REPO / "docker/postgres/initdb/10-temporal-role.sh").read_text()}}
    superuser = {"apiVersion": "v1", "kind": "Secret", "metadata": _meta("postgresql-superuser", namespace),
                 "stringData": {"password": secrets.token_urlsafe(24)}}
    args = ["postgres", "-c", "listen_addresses=*", "-c", "ssl=on", "-c", "ssl_cert_file=/tls/tls.crt",
            "-c", "ssl_key_file=/tls/tls.key", "-c", "ssl_ca_file=/tls/ca.crt", "-c", "ssl_min_protocol_version=TLSv1.2",
            "-c", "hba_file=/etc/postgresql/bundle/pg_hba.conf", "-c", "max_connections=200"]
    ready = ("pg_isready -q --host=/var/run/postgresql --username=postgres --dbname=postgres && "
             "awk 'NR == 6 { ok = ($0 != \"\") } END { exit !ok }' \"$PGDATA/postmaster.pid\"")
    container = {
        "name": "postgresql", "image": image, "imagePullPolicy": "Never", "args": args,
        "env": [{"name": "POSTGRES_USER", "value": "postgres"}, {"name": "POSTGRES_DB", "value": "postgres"},
                {"name": "POSTGRES_PASSWORD_FILE", "value": "/superuser/password"},
                {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"},
                {"name": "TEMPORAL_DB_USER", "value": "temporal"}],
        "ports": [{"name": "postgresql", "containerPort": 5432}],
        "readinessProbe": {"exec": {"command": ["sh", "-c", ready]}, "periodSeconds": 2},
        "volumeMounts": [
            {"name": "data", "mountPath": "/var/lib/postgresql/data"},
            {"name": "socket", "mountPath": "/var/run/postgresql"},
            {"name": "tls", "mountPath": "/tls", "readOnly": True},
            {"name": "superuser", "mountPath": "/superuser", "readOnly": True},
            {"name": "config", "mountPath": "/etc/postgresql/bundle/pg_hba.conf", "subPath": "pg_hba.conf", "readOnly": True},
            {"name": "config", "mountPath": "/docker-entrypoint-initdb.d/10-temporal-role.sh",
             "subPath": "10-temporal-role.sh", "readOnly": True},
        ],
    }
    # The key file root-owned, group postgres, 0440: what PostgreSQL accepts of a root-owned key.
    volumes = [{"name": "data", "emptyDir": {}}, {"name": "socket", "emptyDir": {}},
               {"name": "tls", "secret": {"secretName": tls_secret, "defaultMode": 0o440}},
               {"name": "superuser", "secret": {"secretName": "postgresql-superuser", "defaultMode": 0o440}},
               {"name": "config", "configMap": {"name": "postgresql-config"}}]
    return [config, superuser, _deployment(host, namespace, labels, _pod_spec([container], volumes, 999)),
            _service(host, namespace, labels, {"postgresql": 5432})]


def schema_job(namespace: str, image: str, database_secret: str, host: str = "postgresql") -> list[dict]:
    """compose's temporal-schema job (docker/admin-tools/setup-schema.sh) with the exported
    database-client Secret: both databases created and brought to this release's schema."""
    script = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta("temporal-schema", namespace),
              "data": {"setup-schema.sh": (REPO / "docker/admin-tools/setup-schema.sh").read_text()}}
    tls = "/etc/temporal/tls/database"
    env = {"SQL_PLUGIN": "postgres12", "SQL_HOST": host, "SQL_PORT": "5432", "SQL_USER": "temporal",
           "SQL_TLS": "true", "SQL_TLS_CA_FILE": f"{tls}/ca.crt", "SQL_TLS_CERT_FILE": f"{tls}/tls.crt",
           "SQL_TLS_KEY_FILE": f"{tls}/tls.key", "SQL_TLS_SERVER_NAME": host}
    container = {"name": "schema", "image": image, "imagePullPolicy": "Never",
                 "command": ["sh", "/opt/bundle-schema/setup-schema.sh"],
                 "env": [{"name": k, "value": v} for k, v in env.items()],
                 "volumeMounts": [{"name": "database", "mountPath": tls, "readOnly": True},
                                  {"name": "script", "mountPath": "/opt/bundle-schema", "readOnly": True}]}
    volumes = [{"name": "database", "secret": {"secretName": database_secret, "defaultMode": 0o440}},
               {"name": "script", "configMap": {"name": "temporal-schema"}}]
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": _meta("temporal-schema", namespace),
           "spec": {"backoffLimit": 10, "template": {"spec": _pod_spec([container], volumes, 1000, restartPolicy="OnFailure")}}}
    return [script, job]


def server(values: dict, namespace: str, image: str) -> list[dict]:
    """The five server services as chart 1.6.0 runs them, as many replicas as the values ask
    (server.<service>.replicaCount, from kubernetes.replicas): the configmap's config
    (chart.server_config, the pod's IP as its broadcast address) and dynamic config, the values'
    additionalVolumes / additionalVolumeMounts / additionalEnv, security contexts and service account in every server pod, the chart's
    Services (`<fullname>-frontend`, `-internal-frontend`, `-<service>-headless`)."""
    config = server_config(values, pod_ip=POD_IP)
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(f"{RELEASE}-config", namespace),
                  "data": {"config_template.yaml": TEMPLATE_MARK + yaml.safe_dump(config, sort_keys=False),
                           "dynamic_config.yaml": yaml.safe_dump(values["server"].get("dynamicConfig", {}))}}
    objects = [config_map]
    server_values = values["server"]
    for service in SERVER_SERVICES:
        ports = server_values[service]["service"]
        labels = chart_labels(service)
        env = [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
               {"name": "BIND_ON_IP", "value": "0.0.0.0"},
               {"name": "TEMPORAL_BROADCAST_ADDRESS", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
               {"name": "TEMPORAL_SERVER_CONFIG_FILE_PATH", "value": f"{CONFIG_DIR}/config_template.yaml"},
               {"name": "TEMPORAL_SERVICES", "value": service}, *server_values.get("additionalEnv", [])]
        container = {
            "name": f"temporal-{service}", "image": image, "imagePullPolicy": "Never", "env": env,
            "volumeMounts": [{"name": "config", "mountPath": f"{CONFIG_DIR}/config_template.yaml",
                              "subPath": "config_template.yaml", "readOnly": True},
                             {"name": "config", "mountPath": "/etc/temporal/dynamic_config/dynamic_config.yaml",
                              "subPath": "dynamic_config.yaml", "readOnly": True},
                             *server_values.get("additionalVolumeMounts", [])],
        }
        if service != "worker":
            container["readinessProbe"] = {"tcpSocket": {"port": ports["port"]}, "periodSeconds": 2}
        volumes = [{"name": "config", "configMap": {"name": f"{RELEASE}-config"}},
                   *server_values.get("additionalVolumes", [])]
        # The chart's server.securityContext and server.<service>.containerSecurityContext, as they are.
        spec = _pod_spec([container], volumes, 1000, pod_security=server_values["securityContext"],
                         container_security=server_values[service]["containerSecurityContext"],
                         serviceAccountName=service_account(values))
        objects.append(_deployment(f"{RELEASE}-{service}", namespace, labels, spec, server_values[service]["replicaCount"]))
        listens = {"grpc-rpc": ports["port"], "grpc-membership": ports["membershipPort"]}
        if service == "worker":
            listens.pop("grpc-rpc")
        objects.append(_service(f"{RELEASE}-{service}-headless", namespace, labels, listens, headless=True))
        if service in ("frontend", "internal-frontend"):
            objects.append(_service(f"{RELEASE}-{service}", namespace, labels,
                                    {"grpc-rpc": ports["port"], "http": ports["httpPort"]}))
    return objects


def web(values: dict, namespace: str, image: str) -> list[dict]:
    """The Web UI as chart 1.6.0 runs it from the exported values (its web-deployment.yaml, through
    chart.web_deployment, and web-service.yaml's `<fullname>-web` on 8080), only the image a local
    one and the node's taint tolerated."""
    deployment = web_deployment(values, RELEASE, namespace)
    spec = deployment["spec"]["template"]["spec"]
    spec["tolerations"] = [TOLERATION]
    spec["containers"][0].update(image=image, imagePullPolicy="Never")
    labels = deployment["metadata"]["labels"]
    return [deployment, _service(f"{RELEASE}-web", namespace, labels, {"http": 8080})]
