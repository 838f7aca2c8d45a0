"""docker-compose.prod.yml as a file: Compose v2 accepts it, the security lint finds nothing high,
and the rules the bundle promises hold for every service. No engine needed (`docker compose
config` only parses), but the docker tier runs it so that a broken compose file fails here first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.paths import REPO

pytestmark = pytest.mark.docker

COMPOSE_FILE = REPO / "docker-compose.prod.yml"
IMAGE_VARIABLES = ("BUNDLE_IMAGE", "TEMPORAL_SERVER_IMAGE", "TEMPORAL_ADMINTOOLS_IMAGE", "BUNDLE_POSTGRES_IMAGE", "TEMPORAL_UI_IMAGE",
                   "DEX_IMAGE", "PROMETHEUS_IMAGE", "ALERTMANAGER_IMAGE", "GRAFANA_IMAGE")


@pytest.fixture(scope="module", params=["monitoring", "monitoring,workload-identity"])
def resolved(tmp_path_factory, request) -> dict:
    """`docker compose config` output: anchors merged, variables at their defaults; once with the
    shared stack's profile (monitoring), once with the workload-identity profile's token exchange too."""
    config = tmp_path_factory.mktemp("compose-file") / "bundle.yaml"
    config.write_text((REPO / "bundle.example.yaml").read_text())
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), "BUNDLE_CONFIG_FILE": str(config),
           "COMPOSE_PROFILES": request.param}
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE_FILE), "config", "--format", "json"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, f"docker compose config failed:\n{result.stderr}"
    return json.loads(result.stdout)


def test_compose_lint_has_no_high_findings():
    result = subprocess.run(
        [sys.executable, "-m", "compose_lint", "check", "--format", "json", "--fail-on", "high", str(COMPOSE_FILE)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert "No module named compose_lint" not in result.stderr, "compose-lint is not installed (pip install compose-lint)"
    report = json.loads(result.stdout)
    high = [f for f in report["findings"] if f["severity"] in ("high", "critical") and not f.get("suppressed")]
    assert not high, json.dumps(high, indent=2)
    assert not report["errors"], report["errors"]
    assert result.returncode == 0, result.stderr


def test_every_image_is_pinned_through_a_variable():
    raw = COMPOSE_FILE.read_text()
    for variable in IMAGE_VARIABLES:
        assert "${" + variable + ":-" in raw, variable
    doc = yaml.safe_load(raw)
    for name, service in doc["services"].items():
        image = service.get("image") or doc["x-bundle-image"]["image"]
        assert image.startswith("${") and ":-" in image and not image.rstrip("}").endswith(":latest"), (name, image)


def test_services_are_hardened(resolved):
    services = resolved["services"]
    assert {"bootstrap", "jwks", "postgresql", "temporal-schema", "temporal", "temporal-register-namespaces",
            "temporal-ui", "token-refresher"} <= set(services)
    for name, service in services.items():
        assert "container_name" not in service, name
        assert service.get("read_only") is True, name
        assert service.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        if name != "bootstrap":
            assert service.get("user", "").split(":")[0] not in ("", "0", "root"), f"{name} runs as root"
            assert not service.get("cap_add"), name
        if service.get("restart") != "no":
            test = service.get("healthcheck", {}).get("test")
            assert test, f"long-running service {name} has no healthcheck"
            assert not any("curl" in part for part in test), f"{name}: curl health check"


def test_secrets_are_mounted_only_where_needed(resolved):
    for name, service in resolved["services"].items():
        volumes = {v.get("source"): v for v in service.get("volumes", []) if v.get("type") == "volume"}
        if name != "bootstrap":
            assert "bundle-private" not in volumes, f"{name} mounts private/ (CA key)"
            for source, volume in volumes.items():
                writes = {"token-refresher": ("bundle-root", "bundle-tokens", "bundle-metrics"),
                          "temporal-register-namespaces": ("bundle-cluster-info",)}.get(name, ())
                if source.startswith("bundle-") and source not in writes:
                    assert volume.get("read_only") is True, f"{name} mounts {source} read-write"
        if name not in ("bootstrap", "token-exchange"):
            assert "bundle-exchange" not in volumes, f"{name} mounts the token exchange's signing key"
        if name not in ("bootstrap", "token-refresher"):
            assert "bundle-signing" not in volumes, f"{name} mounts the JWT signing keys"
            assert "bundle-root" not in volumes, name
    temporal_ports = resolved["services"]["temporal"]["ports"]
    assert [p["target"] for p in temporal_ports] == [7233], "only the frontend is published"
    assert all(p.get("host_ip") == "127.0.0.1" for p in temporal_ports)
    assert resolved["networks"]["backend"].get("internal") is True


# Least privilege: every bundle volume each service mounts, and nothing more. A new mount must be
# argued for here. Only the bootstrap sees CA keys; only the refresher sees signing keys; only
# applications' own containers (not in this file) mount clients/ and tokens/.
BUNDLE_MOUNTS = {
    # metrics/: it writes the tokens' expiry metrics there for the exporter (profile monitoring).
    "token-refresher": {"bundle-root", "bundle-signing", "bundle-tokens", "bundle-metrics"},
    "jwks": {"bundle-jwks", "bundle-trust"},
    "postgresql": {"bundle-postgres", "bundle-trust", "bundle-pgbackrest"},
    # pgBackRest's config (the repository passphrase) only: no CA, no certificate, no token.
    "db-backup": {"bundle-pgbackrest"},
    "db-restore": {"bundle-pgbackrest"},
    "temporal-schema": {"bundle-trust", "bundle-dbclient"},
    "temporal": {"bundle-config", "bundle-trust", "bundle-server", "bundle-dbclient", "bundle-tools"},
    # cluster-info/: it records GetClusterInfo there for the UI gate (its only writable mount).
    "temporal-register-namespaces": {"bundle-trust", "bundle-registrar", "bundle-cluster-info"},
    # Its TLS pairs and the recorded cluster info; no token of any kind.
    "ui-gate": {"bundle-trust", "bundle-ui-gate", "bundle-cluster-info"},
    # The data keys and the KEK that unwraps them: the one service that decrypts payloads.
    "codec-server": {"bundle-codec", "bundle-codec-keys", "bundle-codec-kek", "bundle-trust"},
    "temporal-ui": {"bundle-trust", "bundle-ui"},
    # Its own config (client secret, bcrypt hashes) and HTTPS cert; trusts nothing of ours.
    "dex": {"bundle-dex"},
    # Profile workload-identity: its TLS pair and its own signing key, nothing else of ours.
    "token-exchange": {"bundle-exchange", "bundle-trust"},
    # Profile monitoring. Certificates only, as nobody (65534: no key file is readable to it);
    # never tokens/, private/ or codec-keys/. The token report comes from metrics/.
    "expiry-exporter": {"bundle-trust", "bundle-server", "bundle-dbclient", "bundle-postgres", "bundle-jwks",
                        "bundle-ui", "bundle-ui-gate", "bundle-dex", "bundle-grafana", "bundle-clients", "bundle-codec",
                        "bundle-registrar", "bundle-metrics"},
    # Its config and the alert rules, rendered by the bootstrap.
    "prometheus": {"bundle-config"},
    # Nothing of ours: its config comes from docker/alertmanager/.
    "alertmanager": set(),
    # Its HTTPS pair and Dex client secret; the CA to verify Dex. Provisioning comes from grafana/.
    "grafana": {"bundle-grafana", "bundle-trust"},
}


def test_each_service_mounts_only_the_bundle_volumes_it_uses(resolved):
    for name, service in resolved["services"].items():
        if name == "bootstrap":
            continue
        mounted = {v["source"] for v in service.get("volumes", []) if v.get("type") == "volume" and v["source"].startswith("bundle-")}
        assert mounted == BUNDLE_MOUNTS[name], name


def test_dex_keeps_its_state_on_a_named_volume(resolved):
    """Dex's SQLite file (oidc.DEX_DB) on dex-data, writable, mounted by Dex alone."""
    from bootstrap.ops.oidc import DEX_DB

    mounts = {name: {v["source"]: v for v in s.get("volumes", []) if v.get("type") == "volume"}
              for name, s in resolved["services"].items()}
    data = mounts["dex"]["dex-data"]
    assert data["target"] == str(Path(DEX_DB).parent) and not data.get("read_only")
    assert [name for name, volumes in mounts.items() if "dex-data" in volumes] == ["dex"]


def test_startup_order_waits_for_health_and_jobs(resolved):
    deps = {name: s.get("depends_on", {}) for name, s in resolved["services"].items()}
    assert deps["temporal"]["temporal-schema"]["condition"] == "service_completed_successfully"
    assert deps["temporal"]["jwks"]["condition"] == "service_healthy"
    assert deps["temporal"]["dex"]["condition"] == "service_healthy"
    assert deps["temporal-schema"]["postgresql"]["condition"] == "service_healthy"
    # The job starts beside the server, on the same conditions, and waits for the frontend itself
    # (its Python start overlaps the server's); the UI comes after it, the gate before the server
    # (it only needs its key sources).
    assert deps["temporal-register-namespaces"] == deps["temporal"]
    assert deps["temporal-ui"]["temporal-register-namespaces"]["condition"] == "service_completed_successfully"
    assert deps["temporal-ui"]["ui-gate"]["condition"] == "service_started"
    assert set(deps["ui-gate"]) == {"jwks", "dex"}
    for name in ("jwks", "postgresql", "token-refresher", "dex"):
        assert deps[name]["bootstrap"]["condition"] == "service_completed_successfully", name


# The gRPC health checks: grpc-health-probe over mutual TLS, verifying the server's cert against
# our CA under the name it carries, asking for the frontend's WorkflowService (SERVING only once
# membership is ready); the server image ships no client, so its probe comes from bundle-tools.
GRPC_HEALTH_CHECKS = {
    "temporal": ("/opt/bundle-tools/grpc-health-probe", "/bundle/server/health", "temporal"),
    "ui-gate": ("grpc-health-probe", "/bundle/ui-gate/client", "ui-gate"),
}


def _seconds(value: str) -> float:
    return float(value.removesuffix("s"))


@pytest.mark.parametrize("name", sorted(GRPC_HEALTH_CHECKS))
def test_grpc_health_checks_use_grpc_health_probe_over_mutual_tls(resolved, name):
    probe, client, server_name = GRPC_HEALTH_CHECKS[name]
    healthcheck = resolved["services"][name]["healthcheck"]
    kind, executable, *flags = healthcheck["test"]
    assert (kind, executable) == ("CMD", probe)
    options = dict(flag.partition("=")[::2] for flag in flags)
    assert options == {
        "-addr": "127.0.0.1:7233", "-tls": "", "-tls-ca-cert": "/bundle/trust/ca.pem",
        "-tls-client-cert": f"{client}.pem", "-tls-client-key": f"{client}.key",
        "-tls-server-name": server_name, "-service": "temporal.api.workflowservice.v1.WorkflowService",
        "-connect-timeout": options["-connect-timeout"], "-rpc-timeout": options["-rpc-timeout"],
    }
    # Docker kills a check that outlasts its timeout: the probe must give up first, and say why.
    assert _seconds(options["-connect-timeout"]) + _seconds(options["-rpc-timeout"]) < _seconds(healthcheck["timeout"])
    mounted = {v["target"] for v in resolved["services"][name]["volumes"]}
    for path in (probe, options["-tls-ca-cert"], options["-tls-client-cert"]):
        assert not path.startswith("/") or str(Path(path).parent) in mounted, (name, path)


def test_postgres_admits_every_pool_of_every_temporal_service(resolved):
    """Each Temporal service in the container opens its own pools: their sum, plus room for the
    schema job, backups and the superuser's reserved slots, fits PostgreSQL's max_connections."""
    from bootstrap.core.config import load_config
    from bootstrap.ops.render import render_all

    rendered = yaml.safe_load(render_all(load_config(REPO / "bundle.example.yaml"))["temporal.yaml"])
    stores = rendered["persistence"]["datastores"].values()
    assert all(s["sql"]["maxIdleConns"] == s["sql"]["maxConns"] for s in stores)  # no re-handshakes after bursts
    services = resolved["services"]["temporal"]["environment"]["TEMPORAL_SERVICES"].split(",")
    worst_case = len(services) * sum(s["sql"]["maxConns"] for s in stores)
    command = resolved["services"]["postgresql"]["command"]
    max_connections = int(next(a.split("=", 1)[1] for a in command if a.startswith("max_connections=")))
    assert worst_case + 20 <= max_connections, (worst_case, max_connections)


def test_grafana_is_published_like_the_ui_with_its_files_read_only(resolved):
    """Profile monitoring: Grafana on edge (the browser, Dex) and monitoring (Prometheus), published on
    loopback only, every file of docker/grafana/ mounted read-only, started after Prometheus and Dex."""
    grafana = resolved["services"]["grafana"]
    assert grafana["image"] == "grafana/grafana:11.6.1"
    assert [(p["target"], p.get("host_ip")) for p in grafana["ports"]] == [(3000, "127.0.0.1")]
    assert set(grafana["networks"]) == {"edge", "monitoring"}
    binds = [v for v in grafana["volumes"] if v["type"] == "bind"]
    assert {Path(v["source"]).relative_to(REPO).as_posix() for v in binds} == {
        "docker/grafana/grafana.ini", "docker/grafana/provisioning", "docker/grafana/dashboards"}
    assert all(v.get("read_only") and Path(v["source"]).exists() for v in binds), binds
    assert {name: d["condition"] for name, d in grafana["depends_on"].items()} == {
        "bootstrap": "service_completed_successfully", "prometheus": "service_healthy", "dex": "service_healthy"}
    assert "https://127.0.0.1:3000/api/health" in grafana["healthcheck"]["test"]


# keys.backend pkcs11: docker-compose.pkcs11.yml (make up adds it) gives the token's volume and its
# PIN to the services that sign or unwrap with the token's keys, and to no other.
PKCS11_TOKEN_USERS = {"bootstrap", "token-refresher", "codec-server"}


@pytest.fixture(scope="module")
def resolved_pkcs11(tmp_path_factory) -> dict:
    config = tmp_path_factory.mktemp("compose-file-pkcs11") / "bundle.yaml"
    config.write_text((REPO / "bundle.example.yaml").read_text())
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), "BUNDLE_CONFIG_FILE": str(config),
           "COMPOSE_PROFILES": "monitoring,workload-identity", "HSM_PIN_FILE": "/srv/hsm/pin"}
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE_FILE), "-f", str(REPO / "docker-compose.pkcs11.yml"), "config", "--format", "json"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, f"docker compose config failed:\n{result.stderr}"
    return json.loads(result.stdout)


def test_pkcs11_override_gives_the_token_and_pin_only_to_its_users(resolved_pkcs11):
    services = resolved_pkcs11["services"]
    token, pin = set(), set()
    for name, service in services.items():
        volumes = service.get("volumes", [])
        if any(v.get("source") == "bundle-hsm" for v in volumes):
            token.add(name)
        pins = [v for v in volumes if v.get("target") == "/run/secrets/hsm-pin"]
        if pins:
            pin.add(name)
            assert [(p["type"], p["source"], p.get("read_only")) for p in pins] == [("bind", "/srv/hsm/pin", True)], (name, pins)
        if name not in ("bootstrap",):
            mounted = {v["source"] for v in volumes if v.get("type") == "volume" and v["source"].startswith("bundle-")}
            assert mounted == BUNDLE_MOUNTS[name] | ({"bundle-hsm"} if name in PKCS11_TOKEN_USERS else set()), name
        assert service.get("read_only") is True and service.get("cap_drop") == ["ALL"], name
    assert token == pin == PKCS11_TOKEN_USERS, (token, pin)
    assert services["bootstrap"]["environment"]["BUNDLE_SOFTHSM_OWNER"] == "10001:10001"
    assert {services[n]["user"] for n in PKCS11_TOKEN_USERS - {"bootstrap"}} == {"10001:10001"}
