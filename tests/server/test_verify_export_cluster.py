"""The verify Job export-helm ships, run against the real server on PostgreSQL from nothing but
what the Job mounts (its projected Secrets and the bundle.yaml ConfigMap) and its own args, with
each route's Service name swapped for this machine's: listeners the Job must reach at 127.0.0.1
and their port here, listeners its NetworkPolicies keep from it at a closed loopback port (what a
dropped or rejected connection looks like to the pod); the codec server runs from its own exported
Deployment. 0 wrong pairs, and the token attacks done with the role's token alone: no CA key and
no signing key was there."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import yaml

from bootstrap.core.config import load_config
from bootstrap.core.security_model import LISTENERS
from bootstrap.core.verify_plan import SIGNING_KEY_ATTACKS, TOKEN_ATTACKS, port_of
from tests.support.exports import export_cluster, materialize, secrets_of
from tests.support.memory_limit import MemoryLimit, parse_size
from tests.support.paths import REPO
from tests.support.ports import free_port
from tests.support.waits import wait_until

pytestmark = [pytest.mark.server, pytest.mark.timeout(900)]

RUNNING = {"temporal", "jwks", "postgresql", "codec-server"}  # the harness's, and the codec server started here
ROUTE_OPTIONS = ("--listener-host", "--listener-blocked")


@pytest.fixture(scope="module")
def exported(pg_cluster, tmp_path_factory):
    return export_cluster(pg_cluster, tmp_path_factory.mktemp("k8s-verify") / "out")


def _job(dest) -> dict:
    docs = yaml.safe_load_all((dest / "manifests" / "verify-job.yaml").read_text())
    return next(d for d in docs if d and d["kind"] == "Job")


def _config_map(dest) -> dict[str, str]:
    docs = yaml.safe_load_all((dest / "manifests" / "bundle-config.yaml").read_text())
    return next(d for d in docs if d and d["kind"] == "ConfigMap")["data"]


def materialize_job(dest, root) -> tuple[list[str], dict[str, str]]:
    """The Job container's mounts under root (the projected Secrets' items, the ConfigMap's keys);
    its args and environment, paths moved under root."""
    spec = _job(dest)["spec"]["template"]["spec"]
    volumes, container = {v["name"]: v for v in spec["volumes"]}, spec["containers"][0]
    secrets = secrets_of(dest)
    for mount in container["volumeMounts"]:
        target, volume = root / mount["mountPath"].lstrip("/"), volumes[mount["name"]]
        target.mkdir(parents=True, exist_ok=True)
        for source in volume.get("projected", {}).get("sources", []):
            data = secrets[source["secret"]["name"]]
            for item in source["secret"]["items"]:
                (target / item["path"]).parent.mkdir(parents=True, exist_ok=True)
                (target / item["path"]).write_bytes(data[item["key"]])
        if "configMap" in volume:
            for key, text in _config_map(dest).items():
                (target / key).write_text(text)
    env = {e["name"]: str(root / e["value"].lstrip("/")) for e in container["env"]}
    return container["args"], env


def start_codec_server(cluster, dest, root) -> tuple[subprocess.Popen, int]:
    """The codec server from its exported Deployment, on a free port, fetching the harness's JWKS."""
    deployment = next(d for d in yaml.safe_load_all((dest / "manifests" / "codec-server.yaml").read_text())
                      if d and d["kind"] == "Deployment")
    args, env = materialize(dest, deployment, root)
    config, port = load_config(cluster.config_path), free_port()
    args = [a.replace(config.jwks_url, f"https://localhost:{cluster.jwks_port}/jwks.json") for a in args]
    args = [str(port) if a == str(config.codec.port) else a for a in args]
    log = (root / "codec.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "bootstrap", *args], cwd=REPO, env={**os.environ, **env},
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def listening() -> bool:
        assert process.poll() is None, (root / "codec.log").read_text()[-2000:]
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_until(listening, 30, "the exported codec server")
    return process, port


@pytest.fixture(scope="module")
def codec_port(pg_cluster, exported, tmp_path_factory):
    process, port = start_codec_server(pg_cluster, exported, tmp_path_factory.mktemp("codec-root"))
    yield port
    process.terminate()
    process.wait(timeout=10)


def on_loopback(args: list[str], config, codec_port: int, enforced: bool = True) -> tuple[list[str], list[str]]:
    """The args with each route moved to this machine; routes to services the harness does not
    run and the Job must reach are dropped (returned, to be said). enforced=False: the blocked
    listeners answer at their real port, as where no CNI enforces the NetworkPolicies."""
    by_name = {l.name: l for l in LISTENERS}
    out, dropped, closed = [], [], free_port()
    i = 0
    while i < len(args):
        if args[i] not in ROUTE_OPTIONS:
            out.append(args[i])
            i += 1
            continue
        option, (name, _) = args[i], args[i + 1].split("=", 1)
        listener = by_name[name]
        if option == "--listener-blocked" and (enforced or listener.service not in RUNNING):
            out += [option, f"{name}=127.0.0.1:{closed}"]
        elif listener.service in RUNNING:
            port = codec_port if listener.service == "codec-server" else port_of(listener, config)
            out += [option, f"{name}=127.0.0.1:{port}"]
        else:
            dropped.append(name)
        i += 2
    return out, dropped


def run_job(cluster, exported, root, codec_port: int, enforced: bool = True):
    args, env = materialize_job(exported, root)
    args, dropped = on_loopback(args, load_config(cluster.config_path), codec_port, enforced)
    assert not list((root / "bundle").rglob("private")), "the Job must get no private/ directory"
    # In a real cgroup with the Job container's memory limit (swap included).
    limit = _job(exported)["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
    with MemoryLimit(parse_size(limit.replace("Mi", "m"))) as memory:
        process = memory.popen([sys.executable, "-m", "bootstrap", *args, "--json"], cwd=REPO, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **env})
        out, err = process.communicate(timeout=800)
        assert memory.oom_kills == 0, f"the verify Job needs more than its {limit}"
        peak = memory.peak
    return subprocess.CompletedProcess(args, process.returncode, out, err), dropped, (peak, limit)


@pytest.fixture(scope="module")
def job_run(pg_cluster, exported, codec_port, tmp_path_factory):
    return run_job(pg_cluster, exported, tmp_path_factory.mktemp("verify-job-root"), codec_port)


def test_the_exported_job_passes_against_the_real_cluster(job_run):
    result, dropped, (peak, limit) = job_run
    assert result.stdout, result.stderr[-3000:]
    report = json.loads(result.stdout)
    wrong = [f"{r['listener']} <- {r['credential']}: expected {r['expected']}, got {r['got']}"
             for r in report["rows"] if not r["ok"]]
    print(f"\nexported verify Job on the PostgreSQL cluster: {report['pairs']} pairs, {report['wrong']} wrong, "
          f"{report['seconds']}s, peak RSS {peak / 2**20:.0f} MiB of the Job's {limit}; routes not run here: {dropped}")
    assert peak < parse_size(limit.replace("Mi", "m")) * 0.75, "the Job's memory limit leaves too little headroom"
    assert result.returncode == 0 and not wrong and report["passed"], wrong or result.stderr[-3000:]
    by_listener: dict[str, set[str]] = {}
    for row in report["rows"]:
        by_listener.setdefault(row["listener"], set()).add(row["expected"])
    assert by_listener["frontend gRPC"] == {"admitted", "refused"}
    assert by_listener["history"] == {"unreachable"}
    # No certificate or a client-domain one (the key service asks for it); a foreign CA's is refused.
    assert by_listener["codec server"] == {"admitted", "refused"}
    assert by_listener["JWKS"] == {"unreachable"}  # the JWKS policy admits server pods, codec and gate only


def test_the_job_presents_one_role_a_foreign_ca_and_none(job_run):
    report = json.loads(job_run[0].stdout)
    credentials = {r["credential"] for r in report["rows"] if r["listener"] == "frontend gRPC"}
    assert credentials == {"clients/worker", "foreign-ca", "no certificate"}


def test_the_token_attacks_use_the_roles_token_and_skip_only_what_needs_the_signing_key(job_run):
    report = json.loads(job_run[0].stdout)
    tokens = {r["credential"].removeprefix("token: "): r["got"] for r in report["rows"]
              if r["credential"].startswith("token: ")}
    assert set(tokens) == set(TOKEN_ATTACKS) - set(SIGNING_KEY_ATTACKS)
    assert tokens["valid"] == "accepted"
    assert all(got.startswith("denied") for name, got in tokens.items() if name != "valid"), tokens
    skipped = {s["listener"] for s in report["skipped"]}
    assert {f"frontend gRPC token attacks: {name}" for name in SIGNING_KEY_ATTACKS} <= skipped
    assert "every TLS listener: expired certificates" in skipped


def test_nothing_the_job_holds_is_printed(job_run, exported):
    result = job_run[0]
    secrets = secrets_of(exported)
    role = next(name for name in secrets if name.endswith("-role-worker"))
    for value in (secrets[role]["worker.jwt"].strip(), secrets[role]["worker.key"]):
        assert value.decode() not in result.stdout + result.stderr


def test_the_job_fails_where_the_policies_are_not_enforced(pg_cluster, exported, codec_port, tmp_path):
    """The blocked listeners answering (a CNI without NetworkPolicy): the Job exits 1 and names them."""
    result, _, _ = run_job(pg_cluster, exported, tmp_path, codec_port, enforced=False)
    report = json.loads(result.stdout)
    wrong = {(r["listener"], r["credential"]) for r in report["rows"] if not r["ok"]}
    print(f"\nthe Job with the policies not enforced: {report['pairs']} pairs, {report['wrong']} wrong: "
          f"{sorted({listener for listener, _ in wrong})}; not tried: {report['skipped']}")
    assert result.returncode == 1
    assert ("history", "no certificate") in wrong and ("JWKS", "no certificate") in wrong
    assert not {"frontend gRPC", "frontend HTTP API"} & {listener for listener, _ in wrong}, sorted(wrong)
    assert ("frontend membership", "no certificate") in wrong
