"""A steady load of workflow starts, polls and fresh connections, run while something changes
underneath (a rotation, a migration). Every failure is counted, never retried away."""

from __future__ import annotations

import asyncio
import sys
import tempfile
import uuid

from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.worker import Worker

from bootstrap.core import pki
from bootstrap.client import TokenFileWatcher, connect
from tests.support.cluster import LocalCluster
from tests.support.workflows import GreetingWorkflow, greet


class Load:
    def __init__(self, cluster: LocalCluster):
        self.cluster, self.stop = cluster, asyncio.Event()
        self.handles, self.start_failures, self.fresh_ok, self.fresh_failures = [], [], 0, []
        # The token refresher must outlive the change: if it exits, every token expires after it.
        self.refresher_exit: int | None = None
        self.refresher_output = ""

    async def starts(self, client, queue):
        while not self.stop.is_set():
            try:
                self.handles.append(
                    await client.start_workflow(GreetingWorkflow.run, "load", id=f"load-{uuid.uuid4()}", task_queue=queue)
                )
            except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
                self.start_failures.append(f"{pki.utcnow():%H:%M:%S.%f} {type(exc).__name__}: {exc}")
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


async def under_load(cluster: LocalCluster, action, settle: float = 5):
    """Run `await action()` under load (with a token refresher and live token watchers, as in
    production); then stop the load and wait for every started workflow. Returns
    (load, results, what action returned)."""
    output = tempfile.TemporaryFile()
    refresher = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bootstrap", "mint-tokens", "--config", str(cluster.config_path), "--out",
        str(cluster.bundle), "--watch", "1", stdout=output, stderr=output)
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
            outcome = await action()
            await asyncio.sleep(settle)  # past one more TLS reload
            load.stop.set()
            await asyncio.gather(*loops)
            results = await asyncio.wait_for(asyncio.gather(*(h.result() for h in load.handles)), 120)
    finally:
        for task in background:
            task.cancel()
        load.refresher_exit = refresher.returncode
        if refresher.returncode is None:
            refresher.terminate()
        await refresher.wait()
        output.seek(0)
        load.refresher_output = output.read().decode(errors="replace")[-2000:]
        output.close()
    return load, results, outcome
