"""A steady load of workflow starts, polls and fresh connections runs while the leaf certs, the
JWT signing key and the CA are rotated on the real server. Zero calls may fail."""

from __future__ import annotations

import asyncio
import sys
import uuid

import pytest
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.worker import Worker

from bootstrap import pki
from bootstrap.client import TokenFileWatcher, connect
from tests.harness import LocalCluster
from tests.server.workflows import GreetingWorkflow, greet


@pytest.fixture(scope="module")
def fast_cluster(tmp_path_factory):
    # Short intervals so a whole rollover fits in a test: JWKS refetch and TLS reload every 2s,
    # tokens live 15s (re-minted at 10s by the refresher).
    cluster = LocalCluster(tmp_path_factory.mktemp("rotation"), namespaces=("default",), token_lifetime="15s", jwks_refresh="2s")
    yield cluster.start_registered()
    cluster.stop()


class Load:
    def __init__(self, cluster: LocalCluster):
        self.cluster, self.stop = cluster, asyncio.Event()
        self.handles, self.start_failures, self.fresh_ok, self.fresh_failures = [], [], 0, []

    async def starts(self, client, queue):
        while not self.stop.is_set():
            try:
                self.handles.append(
                    await client.start_workflow(GreetingWorkflow.run, "load", id=f"load-{uuid.uuid4()}", task_queue=queue)
                )
            except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
                self.start_failures.append(f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(0.05)

    async def fresh_connections(self):
        # New connections read cert, key, trust bundle and token from disk, as a restarting app would.
        while not self.stop.is_set():
            try:
                client = await connect(self.cluster.address, bundle_dir=self.cluster.bundle, role="client", server_name="localhost")
                await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace="default"))
                self.fresh_ok += 1
            except Exception as exc:  # noqa: BLE001
                self.fresh_failures.append(f"{pki.utcnow():%H:%M:%S.%f} {type(exc).__name__}: {exc}")
            await asyncio.sleep(0.3)


async def rotate(cluster: LocalCluster, *extra: str) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bootstrap", "rotate", "--config", str(cluster.config_path), "--out", str(cluster.bundle),
        "--wait", "--probe-address", cluster.address, "--server-name", "localhost", *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 180)
    assert process.returncode == 0, err.decode()
    return out.decode()


def fingerprints(cluster, rel):
    return [pki.fingerprint(c) for c in pki.load_certs((cluster.bundle / rel).read_bytes(), rel)]


def test_rotations_under_load_fail_no_call(fast_cluster):
    cluster = fast_cluster
    before = {"ca": fingerprints(cluster, "private/ca.pem"), "frontend": fingerprints(cluster, "server/frontend.pem"),
              "kid": (cluster.bundle / "private/jwt/active").read_text()}

    async def scenario():
        refresher = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bootstrap", "mint-tokens", "--config", str(cluster.config_path), "--out",
            str(cluster.bundle), "--watch", "1", stdout=asyncio.subprocess.DEVNULL)
        worker_client = await connect(cluster.address, bundle_dir=cluster.bundle, role="worker", server_name="localhost")
        starter = await connect(cluster.address, bundle_dir=cluster.bundle, role="client", server_name="localhost")
        watchers = [TokenFileWatcher(worker_client, cluster.bundle / "tokens/worker.jwt", 0.5),
                    TokenFileWatcher(starter, cluster.bundle / "tokens/client.jwt", 0.5)]
        background = [asyncio.create_task(w.run()) for w in watchers]
        load, queue = Load(cluster), f"load-{uuid.uuid4()}"
        try:
            async with Worker(worker_client, task_queue=queue, workflows=[GreetingWorkflow], activities=[greet]):
                loops = [asyncio.create_task(load.starts(starter, queue)), asyncio.create_task(load.fresh_connections())]
                await asyncio.sleep(3)
                logs = [await rotate(cluster, "--kind", "certs", "--all")]
                await asyncio.sleep(5)  # the server re-reads the files every 2s
                logs.append(await rotate(cluster, "--kind", "signing-key"))
                logs.append(await rotate(cluster, "--kind", "ca"))
                await asyncio.sleep(5)
                load.stop.set()
                await asyncio.gather(*loops)
                results = await asyncio.wait_for(asyncio.gather(*(h.result() for h in load.handles)), 120)
        finally:
            for task in background:
                task.cancel()
            refresher.terminate()
            await refresher.wait()
        return load, results, logs

    load, results, logs = asyncio.run(scenario())
    assert not load.start_failures, load.start_failures[:5]
    assert not load.fresh_failures, (load.fresh_failures[:5], logs)
    assert len(results) > 100 and all(r == "hello, load" for r in results)
    assert load.fresh_ok > 50
    # The rotations really happened.
    assert fingerprints(cluster, "private/ca.pem") != before["ca"]
    assert fingerprints(cluster, "server/frontend.pem") != before["frontend"]
    assert (cluster.bundle / "private/jwt/active").read_text() != before["kid"]
    assert "retired" in logs[1] and "old CA dropped" in logs[2]
