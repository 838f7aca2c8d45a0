"""Workflow-start throughput and latency with mTLS + JWT versus the same server without frontend
and internode TLS and without the authorizer. Both use the real temporal-server and the bundle's
rendered config; the database connection is identical in both (on PostgreSQL: TLS + client
certificate), so the figures isolate what the bundle adds. Rounds alternate the two servers; the
median of the rounds is reported, with each round's figures.

    python benchmarks/bench_server.py [--starts 600] [--concurrency 32] [--rounds 3] [--driver sqlite|postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from temporalio.client import Client  # noqa: E402

from bootstrap.client import connect  # noqa: E402
from tests.support.cluster import LocalCluster  # noqa: E402
from tests.support.workflows import GreetingWorkflow  # noqa: E402


async def _client(cluster: LocalCluster) -> Client:
    if cluster.secure:
        return await connect(cluster.address, bundle_dir=cluster.bundle, role="client", server_name="localhost")
    return await Client.connect(cluster.address)


async def _register_and_warm(cluster: LocalCluster, client: Client) -> None:
    if cluster.secure:
        cluster.register_namespaces()
    else:
        from google.protobuf.duration_pb2 import Duration
        from temporalio.api.workflowservice.v1 import RegisterNamespaceRequest

        await client.workflow_service.register_namespace(
            RegisterNamespaceRequest(namespace="default", workflow_execution_retention_period=Duration(seconds=86400))
        )
    for _ in range(60):  # wait for the namespace cache, then warm connections up
        try:
            await client.start_workflow(GreetingWorkflow.run, "warm", id=f"warm-{uuid.uuid4()}", task_queue="bench")
            return
        except Exception:  # noqa: BLE001
            await asyncio.sleep(0.5)
    raise RuntimeError("namespace never became usable")


async def measure(cluster: LocalCluster, starts: int, concurrency: int) -> dict:
    client = await _client(cluster)
    await _register_and_warm(cluster, client)
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(starts):
        queue.put_nowait(i)

    async def worker():
        while not queue.empty():
            queue.get_nowait()
            began = time.perf_counter()
            await client.start_workflow(GreetingWorkflow.run, "b", id=f"bench-{uuid.uuid4()}", task_queue="bench")
            latencies.append(time.perf_counter() - began)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "throughput": starts / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
    }


def run_one(secure: bool, args) -> dict:
    cluster = LocalCluster(Path(tempfile.mkdtemp(prefix="bench-")), driver=args.driver, secure=secure)
    try:
        cluster.start()
        return asyncio.run(measure(cluster, args.starts, args.concurrency))
    finally:
        cluster.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--driver", choices=("sqlite", "postgres"), default="sqlite")
    args = parser.parse_args()
    modes = {"plaintext, no auth": False, "mTLS + JWT": True}
    rounds: dict[str, list[dict]] = {mode: [] for mode in modes}
    print(f"workflow starts: {args.starts}, concurrency {args.concurrency}, persistence {args.driver}, "
          f"{args.rounds} rounds")
    print(f"{'round':<8}{'mode':<20}{'starts/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for number in range(1, args.rounds + 1):
        for mode, secure in modes.items():
            r = run_one(secure, args)
            rounds[mode].append(r)
            print(f"{number:<8}{mode:<20}{r['throughput']:>10.1f}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}", flush=True)
    median = {mode: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for mode, rs in rounds.items()}
    for mode, r in median.items():
        print(f"{'median':<8}{mode:<20}{r['throughput']:>10.1f}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}")
    base, secure = median["plaintext, no auth"], median["mTLS + JWT"]
    print(f"secure/plaintext (medians): throughput x{secure['throughput'] / base['throughput']:.2f}, "
          f"p50 x{secure['p50_ms'] / base['p50_ms']:.2f}, p99 x{secure['p99_ms'] / base['p99_ms']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
