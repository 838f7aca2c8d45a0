"""What the UI gate costs: a UI-shaped call mix (DescribeNamespace, ListWorkflowExecutions,
CountWorkflowExecutions, GetClusterInfo, in turn) straight to the frontend versus through
`serve-ui-gate`, on the real temporal-server from the test harness (mTLS + JWT, the bundle's
rendered config) with the gate started as compose starts it.

    python benchmarks/bench_gate.py [--seconds 8] [--driver sqlite|postgres] [--concurrency 1 32]

The caller is what the Web UI server is: gRPC channels (HTTP/2, multiplexed, 8 callers each:
the gate allows 16 streams per connection), the UI's client certificate, a bearer token on every
call. Two tokens:
- `temporal-system:read` (an operator): the frontend allows every call, so direct and through the
  gate do the same work and the difference is the gate's hop;
- `default:read` (a namespace user), through the gate only: the frontend refuses GetClusterInfo
  and the gate answers it itself (the path namespace-only users take).
The frontend's rate limits (10 visibility calls/s per namespace, 2400 calls/s in all by default) are
raised for this cluster, so the figures are the hop's and the server's, not the limiters'.

A third path is the floor of any gate, when nginx is installed (Debian's nginx-light): nginx as a
hop that checks nothing, in the gate's place and with the gate's certificates (mTLS in, mTLS out,
HTTP/2 both sides, upstream connections kept), `grpc_pass` and nothing else. No gate can cost less
than a hop that does no work: if this one misses the gate's goal, the goal needs no hop at all.
For each case prints calls/s, p50 and p99 per call (all four methods together), each as a ratio
to direct in the same run, and the CPU seconds per 1000 calls of the hop (the gate, or nginx with
its workers) and of the server process (from /proc/<pid>/stat). The callers run in this process,
on the same cores as the server and the hop.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc  # noqa: E402
from temporalio.api.workflowservice.v1 import (  # noqa: E402
    CountWorkflowExecutionsRequest,
    DescribeNamespaceRequest,
    GetClusterInfoRequest,
    ListWorkflowExecutionsRequest,
)

from bootstrap.client import connect  # noqa: E402
from bootstrap.store import Layout  # noqa: E402
from tests.support.cluster import LocalCluster  # noqa: E402
from tests.support.ports import free_port  # noqa: E402
from tests.support.waits import wait_until  # noqa: E402

SERVICE = "/temporal.api.workflowservice.v1.WorkflowService/"
MIX = [
    ("DescribeNamespace", DescribeNamespaceRequest(namespace="default")),
    ("ListWorkflowExecutions", ListWorkflowExecutionsRequest(namespace="default", page_size=20)),
    ("CountWorkflowExecutions", CountWorkflowExecutionsRequest(namespace="default")),
    ("GetClusterInfo", GetClusterInfoRequest()),
]
ROLES = {"uiop": {"permissions": ["temporal-system:read"], "token_lifetime": "2h"},
         "uiuser": {"permissions": ["default:read"], "token_lifetime": "2h"}}
TICK = os.sysconf("SC_CLK_TCK")
CALLERS_PER_CHANNEL = 8


# The frontend allows 10 visibility calls/s per namespace by default (frontend.namespaceRPS.visibility),
# and 2400 calls/s per frontend and per namespace (frontend.rps, frontend.namespaceRPS): a fast path
# would measure those limiters, not the hop. Raised for this cluster only.
UNLIMITED_RATES = "".join(f"{key}:\n  - value: 100000\n" for key in (
    "frontend.namespaceRPS.visibility", "frontend.rps", "frontend.namespaceRPS"))


def unlimited_rates(cluster: LocalCluster) -> None:
    with open(cluster.bundle / "config" / "dynamic_config.yaml", "a") as fh:
        fh.write(UNLIMITED_RATES)


def cpu_seconds(*pids: int) -> float:
    """utime + stime of processes and their waited-for children."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += sum(int(v) for v in fields[11:15])
    return total / TICK


def start_gate(cluster: LocalCluster) -> tuple[subprocess.Popen, str]:
    info = cluster.workdir / "cluster-info.json"
    subprocess.run([sys.executable, "-m", "bootstrap", "register-namespaces", "--config", str(cluster.config_path),
                    "--out", str(cluster.bundle), "--address", cluster.address, "--cluster-info", str(info)],
                   check=True, capture_output=True, text=True, timeout=120)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bootstrap", "serve-ui-gate", "--config", str(cluster.config_path), "--out",
         str(cluster.bundle), "--host", "127.0.0.1", "--port", str(port), "--upstream", cluster.address,
         "--cluster-info", str(info), "--jwks-url", f"https://localhost:{cluster.jwks_port}/jwks.json"],
        stdout=open(cluster.workdir / "ui-gate.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True,
    )

    def listening() -> bool:
        assert process.poll() is None, (cluster.workdir / "ui-gate.log").read_text()[-2000:]
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_until(listening, 30, "the UI gate")
    return process, f"127.0.0.1:{port}"


NOOP_HOP_CONF = """\
daemon off;
worker_processes {workers};
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {workdir}/nginx-body;
  upstream frontend {{ server {upstream}; keepalive 32; }}
  server {{
    listen 127.0.0.1:{port} ssl http2;
    ssl_certificate {server_cert};
    ssl_certificate_key {server_key};
    ssl_client_certificate {client_ca};
    ssl_verify_client on;
    location / {{
      grpc_pass grpcs://frontend;
      grpc_ssl_certificate {client_cert};
      grpc_ssl_certificate_key {client_key};
      grpc_ssl_trusted_certificate {upstream_ca};
      grpc_ssl_verify on;
      grpc_ssl_name localhost;
      grpc_ssl_server_name on;
      grpc_ssl_session_reuse on;
    }}
  }}
}}
"""


def start_noop_hop(cluster: LocalCluster, workers: str) -> tuple[subprocess.Popen, str] | None:
    """nginx forwarding every call untouched, with the gate's certificates; None without nginx."""
    nginx = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
    if nginx is None:
        return None
    layout, port, workdir = Layout(cluster.bundle), free_port(), cluster.workdir / f"noop-hop-{workers}"
    workdir.mkdir()
    server_cert, server_key = layout.leaf("ui-gate", "server")
    client_cert, client_key = layout.leaf("ui-gate", "client")
    conf = workdir / "nginx.conf"
    conf.write_text(NOOP_HOP_CONF.format(
        workers=workers, workdir=workdir, upstream=cluster.address, port=port, server_cert=server_cert,
        server_key=server_key, client_ca=layout.trust_files("client")[0], client_cert=client_cert,
        client_key=client_key, upstream_ca=layout.trust_bundle))
    process = subprocess.Popen([nginx, "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "nginx-error.log")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)

    def listening() -> bool:
        assert process.poll() is None, (workdir / "nginx-error.log").read_text()[-2000:]
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_until(listening, 30, "nginx")
    return process, f"127.0.0.1:{port}"


def process_tree(pid: int) -> list[int]:
    """A process and its children (nginx's workers)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *map(int, children)]


def channel(cluster: LocalCluster, address: str, server_name: str) -> grpc.aio.Channel:
    bundle = cluster.bundle
    credentials = grpc.ssl_channel_credentials(
        (bundle / "trust/ca.pem").read_bytes(), (bundle / "ui/client.key").read_bytes(),
        (bundle / "ui/client.pem").read_bytes())
    return grpc.aio.secure_channel(address, credentials, options=[("grpc.ssl_target_name_override", server_name)])


async def seed(cluster: LocalCluster, count: int = 20) -> None:
    """Some workflows for the list and count to return, as a UI page would show."""
    client = await connect(cluster.address, bundle_dir=cluster.bundle, role="client", server_name="localhost")
    for attempt in range(60):  # the namespace reaches the frontend's cache within ~10 s
        try:
            await client.start_workflow("BenchIdle", id=f"bench-seed-{uuid.uuid4()}", task_queue="bench-idle")
            break
        except Exception:  # noqa: BLE001
            if attempt == 59:
                raise
            await asyncio.sleep(0.5)
    for _ in range(count - 1):
        await client.start_workflow("BenchIdle", id=f"bench-seed-{uuid.uuid4()}", task_queue="bench-idle")


async def run_case(chans: list[grpc.aio.Channel], token: str, concurrency: int,
                   seconds: float) -> tuple[list[float], list[str]]:
    calls = [[chan.unary_unary(SERVICE + name, request_serializer=lambda m: m.SerializeToString(),
                               response_deserializer=lambda b: b) for name, _ in MIX] for chan in chans]
    metadata = (("authorization", f"Bearer {token}"),)
    latencies: list[float] = []
    errors: list[str] = []

    async def caller(offset: int, until: float, record: bool) -> None:
        i = offset
        while time.monotonic() < until:
            method, request = calls[offset % len(chans)][i % len(MIX)], MIX[i % len(MIX)][1]
            started = time.perf_counter()
            try:
                await method(request, metadata=metadata, timeout=10)
            except grpc.aio.AioRpcError as exc:
                errors.append(f"{MIX[i % len(MIX)][0]}: {exc.code().name} {exc.details()}")
            if record:
                latencies.append(time.perf_counter() - started)
            i += 1

    warm = time.monotonic() + 1.0  # connections, handshakes, the gate's token cache
    await asyncio.gather(*(caller(n, warm, False) for n in range(concurrency)))
    until = time.monotonic() + seconds
    await asyncio.gather(*(caller(n, until, True) for n in range(concurrency)))
    return latencies, errors


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


async def measure(cluster, hop_pids: list[int], address: str, server_name: str, token: str, concurrency: int,
                  seconds: float) -> dict:
    # The gate allows 16 streams per connection (gate_budget.STREAMS_PER_CONNECTION); Go's gRPC
    # client (the UI server) queues at that bound, Python's is refused: 8 callers per channel.
    chans = [channel(cluster, address, server_name) for _ in range(-(-concurrency // CALLERS_PER_CHANNEL))]
    for chan in chans:
        await chan.channel_ready()
    gate_cpu, server_cpu = cpu_seconds(*hop_pids), cpu_seconds(cluster.server_process.pid)
    started = time.monotonic()
    latencies, errors = await run_case(chans, token, concurrency, seconds)
    elapsed = time.monotonic() - started - 1.0  # the warm-up second is in the CPU figures only
    gate_cpu, server_cpu = cpu_seconds(*hop_pids) - gate_cpu, cpu_seconds(cluster.server_process.pid) - server_cpu
    for chan in chans:
        await chan.close()
    if errors:
        raise RuntimeError(f"{len(errors)} calls failed (first: {errors[0]}): the mix must succeed on this path")
    per_k = 1000 / len(latencies)
    return {"calls/s": len(latencies) / elapsed, "p50 ms": percentile(latencies, 50) * 1000,
            "p99 ms": percentile(latencies, 99) * 1000, "hop CPU-s/1k": gate_cpu * per_k if hop_pids else None,
            "server CPU-s/1k": server_cpu * per_k, "calls": len(latencies)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--driver", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--nginx-workers", nargs="*", default=["1", "auto"],
                        help="worker_processes of each no-op hop case (the gate is one process)")
    args = parser.parse_args()
    cluster = LocalCluster(Path(tempfile.mkdtemp(prefix="bench-gate-")), driver=args.driver, extra_roles=ROLES,
                           after_init=unlimited_rates)
    cluster.start_registered()
    started: list[subprocess.Popen] = []
    try:
        asyncio.run(seed(cluster))
        gate, gate_address = start_gate(cluster)
        started.append(gate)
        operator, user = cluster.token("uiop"), cluster.token("uiuser")
        cases = [("direct", [], cluster.address, "localhost", operator),
                 ("gate", [gate.pid], gate_address, "ui-gate", operator),
                 ("gate, namespace user", [gate.pid], gate_address, "ui-gate", user)]
        for workers in args.nginx_workers:
            hop = start_noop_hop(cluster, workers)
            if hop is None:
                print("# no nginx on this host: the no-op hop (the floor of any gate) is left out")
                break
            started.append(hop[0])
            cases.append((f"no-op hop, nginx w={workers}", process_tree(hop[0].pid), hop[1], "ui-gate", operator))
        print(f"# {platform.node()} {os.cpu_count()} CPUs, {args.driver}, {args.seconds:g} s per case, "
              f"mix: {', '.join(name for name, _ in MIX)}")
        print(f"{'path':<26} {'c':>3} {'calls/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'x calls/s':>9} {'x p50':>6} "
              f"{'x p99':>6} {'hop CPU-s/1k':>12} {'server CPU-s/1k':>15}")
        for concurrency in args.concurrency:
            direct = None
            for name, hop_pids, address, server_name, token in cases:
                row = asyncio.run(measure(cluster, hop_pids, address, server_name, token, concurrency, args.seconds))
                direct = direct or row
                hop_cpu = "-" if row["hop CPU-s/1k"] is None else f"{row['hop CPU-s/1k']:.2f}"
                print(f"{name:<26} {concurrency:>3} {row['calls/s']:>8.0f} {row['p50 ms']:>7.2f} {row['p99 ms']:>7.2f} "
                      f"{row['calls/s'] / direct['calls/s']:>9.2f} {row['p50 ms'] / direct['p50 ms']:>6.2f} "
                      f"{row['p99 ms'] / direct['p99 ms']:>6.2f} {hop_cpu:>12} {row['server CPU-s/1k']:>15.2f}",
                      flush=True)
    finally:
        for process in started:
            process.terminate()
            process.wait(10)
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
