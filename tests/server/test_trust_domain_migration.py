"""A cluster made by the one-CA bundle is separated into trust domains under load: zero failed
calls, and afterwards the attack matrix passes on the migrated cluster."""

from __future__ import annotations

import asyncio
import sys
import uuid

import pytest
from temporalio.worker import Worker

from bootstrap.core.config import load_config
from bootstrap.core.pki import CA
from bootstrap.ops.plan import DOMAINS, leaf_specs
from bootstrap.store import Layout
from bootstrap.client import connect
from tests.support.binaries import run_cli
from tests.support.cluster import LocalCluster
from tests.support.load import under_load
from tests.support.trust_domains import Credential, client_context, postgres_login, probe_tls, run_matrix
from tests.support.workflows import GreetingWorkflow, greet


def into_one_ca_layout(cluster: LocalCluster) -> None:
    """What a bundle of the previous release looks like after upgrading the code: every leaf
    signed by the one CA, no domain CA files, every domain's trust files holding that CA."""
    config, layout = load_config(cluster.config_path), Layout(cluster.bundle)
    shared = CA.from_pem(*(p.read_bytes() for p in layout.domain_ca("server")))
    for spec in leaf_specs(config):
        if spec.domain == "server":
            continue
        leaf = shared.issue_cert(*spec.sans, common_name=spec.common_name, usage=spec.usage)
        cert_path, key_path = layout.leaf(spec.directory, spec.name)
        key_path.write_bytes(leaf.key_pem())
        cert_path.write_bytes(leaf.cert_pem())
    for domain in DOMAINS[1:]:
        for path in layout.domain_ca(domain):
            path.unlink()
        for path in layout.trust_files(domain):
            path.write_bytes(shared.cert_pem())


@pytest.fixture(scope="module")
def legacy_cluster(tmp_path_factory):
    cluster = LocalCluster(tmp_path_factory.mktemp("legacy"), namespaces=("default",), token_lifetime="15s",
                           jwks_refresh="2s", after_init=into_one_ca_layout)
    yield cluster.start_registered()
    cluster.stop()


def client_cert_opens_history(cluster) -> bool:
    layout, net = Layout(cluster.bundle), load_config(cluster.config_path).network
    client = Credential("client", *layout.leaf("clients", "client"), "client")
    context = client_context(layout.trust_files("internode")[0], client)
    return probe_tls(net.history_port, net.internode_server_name, context) == "admitted"


async def rotate_trust_domains(cluster: LocalCluster) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bootstrap", "rotate", "--config", str(cluster.config_path), "--out", str(cluster.bundle),
        "--kind", "trust-domains", "--wait", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 180)
    assert process.returncode == 0, err.decode()
    return out.decode()


def test_one_ca_bundle_is_separated_under_load_with_no_failed_call(legacy_cluster, tmp_path):
    cluster = legacy_cluster
    # The hole this closes, on the cluster as it was: any client cert opens internode listeners.
    assert client_cert_opens_history(cluster)
    again = run_cli("init", "--config", str(cluster.config_path), "--out", str(cluster.bundle))
    assert "still share the server CA" in again.stderr and "rotate --kind trust-domains" in again.stderr
    assert not Layout(cluster.bundle).domain_ca("client")[0].exists(), "init must never split domains by itself"

    load, results, log = asyncio.run(under_load(cluster, lambda: rotate_trust_domains(cluster)))
    assert load.refresher_exit is None, load.refresher_output
    assert not load.start_failures, load.start_failures[:5]
    assert not load.fresh_failures, (load.fresh_failures[:5], log)
    assert len(results) > 50 and all(r == "hello, load" for r in results)
    assert load.fresh_ok > 20
    assert "old CA dropped" in log
    layout = Layout(cluster.bundle)
    assert all(layout.domain_ca(d)[0].exists() for d in DOMAINS)
    assert not client_cert_opens_history(cluster)
    tried, wrong = run_matrix(cluster, tmp_path)
    print(f"\nmigrated cluster: {tried} pairs tried, {len(wrong)} wrong")
    assert not wrong, "\n".join(wrong)
    # A second run has nothing left to separate.
    again = run_cli("rotate", "--config", str(cluster.config_path), "--out", str(cluster.bundle),
                    "--kind", "trust-domains", check=False)
    assert again.returncode == 1 and "already separate" in again.stderr


@pytest.fixture(scope="module")
def legacy_pg_cluster(tmp_path_factory):
    cluster = LocalCluster(tmp_path_factory.mktemp("legacy-pg"), driver="postgres", namespaces=("default",),
                           jwks_refresh="2s", after_init=into_one_ca_layout)
    yield cluster.start_registered()
    cluster.stop()


def rotate_cli(cluster: LocalCluster, *extra: str) -> str:
    return run_cli("rotate", "--config", str(cluster.config_path), "--out", str(cluster.bundle), *extra).stdout


def test_on_postgres_the_shared_ca_leaves_postgres_trust_only_after_a_server_restart(legacy_pg_cluster, tmp_path):
    """Temporal loads its database client certificate once: PostgreSQL must keep trusting the
    shared CA until the server restarted with the re-issued one, then stop trusting it."""
    cluster, layout = legacy_pg_cluster, Layout(legacy_pg_cluster.bundle)
    user = load_config(cluster.config_path).persistence.user
    old_dbclient = tmp_path / "old-dbclient"
    old_dbclient.mkdir()
    for suffix in ("pem", "key"):
        (old_dbclient / f"{user}.{suffix}").write_bytes((cluster.bundle / f"dbclient/{user}.{suffix}").read_bytes())
    old = Credential("old dbclient", old_dbclient / f"{user}.pem", old_dbclient / f"{user}.key", "server")
    server_ca = layout.trust_files("server")[0]

    first = rotate_cli(cluster, "--kind", "trust-domains", "--wait")
    assert "phase restart-pending" in first and "restart of the temporal server" in first, first
    cluster.postgres.reload_tls()
    # Still trusted: the running server's pooled connections and new ones use the old cert.
    assert postgres_login(cluster.postgres.port, server_ca, old, user) == "admitted"
    cluster.restart_server()
    second = rotate_cli(cluster)
    assert "old CA dropped" in second and not layout.rotation_state.exists(), second
    cluster.postgres.reload_tls()
    assert postgres_login(cluster.postgres.port, server_ca, old, user) == "refused"
    new = Credential("new dbclient", *layout.leaf("dbclient", user), "database")
    assert postgres_login(cluster.postgres.port, server_ca, new, user) == "admitted"
    # The restarted server works on the new certificate: a workflow runs end to end.
    asyncio.run(run_one_workflow(cluster))
    tried, wrong = run_matrix(cluster, tmp_path)
    print(f"\nmigrated PostgreSQL cluster: {tried} pairs tried, {len(wrong)} wrong")
    assert not wrong, "\n".join(wrong)


async def run_one_workflow(cluster: LocalCluster) -> None:
    client = await connect(cluster.address, bundle_dir=cluster.bundle, role="worker", server_name="localhost")
    queue = f"after-migration-{uuid.uuid4()}"
    async with Worker(client, task_queue=queue, workflows=[GreetingWorkflow], activities=[greet]):
        result = await client.execute_workflow(GreetingWorkflow.run, "pg", id=f"wf-{uuid.uuid4()}", task_queue=queue)
    assert result == "hello, pg"
