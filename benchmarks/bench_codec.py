"""/decode throughput and latency of the codec server started as docker-compose.prod.yml starts
it: `serve-jwks --port` and `serve-codec --port --jwks-url https://...` as processes, TLS on,
keep-alive connections, a token that may decrypt, payloads of 1 KB encrypted for the namespace.

    python benchmarks/bench_codec.py [--seconds 3] [--max-requests 5000]

For each case (payloads per request x concurrent clients) prints requests/s, payloads/s, the p50
and p99 request latency, and the server's CPU time per request (warm-up included, from
/proc/<pid>/stat). The clients run in this process (aiohttp), on the same cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
from google.protobuf import json_format  # noqa: E402
from temporalio.api.common.v1 import Payload, Payloads  # noqa: E402

from bootstrap.cli import main  # noqa: E402
from bootstrap.core.codec import KeyringFile, encrypt  # noqa: E402
from tests.support.codec import codec_config  # noqa: E402
from tests.support.ports import free_port  # noqa: E402
from tests.support.waits import wait_until  # noqa: E402

CASES = [(1, 1), (1, 8), (50, 1), (50, 8), (1000, 1), (1000, 8)]  # (payloads, concurrency)
CONFIG = codec_config("bench-codec", namespaces=("orders",), roles=("system", "worker", "client"),
                      network="{jwks_host: localhost, jwks_port: %d}")


def start(argv: list[str], log: Path, url: str, ca: Path) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "bootstrap", *argv], stdout=open(log, "wb"),
                               stderr=subprocess.STDOUT, start_new_session=True,
                               cwd=Path(__file__).resolve().parent.parent)
    context = ssl.create_default_context(cafile=str(ca))

    def healthy():
        try:
            return urllib.request.urlopen(url + "/healthz", context=context, timeout=2).status == 200
        except OSError:
            return False

    wait_until(healthy, 30, f"{argv[0]} health")
    return process


def request_body(out: Path, count: int) -> bytes:
    keyring = KeyringFile(out / "codec-keys/keys.json").current()  # one ring and one KEK per namespace
    plain = Payload(metadata={"encoding": b"binary/plain"}, data=os.urandom(1024))
    return json_format.MessageToJson(Payloads(payloads=[encrypt(plain, keyring, "orders")] * count)).encode()


async def run_case(url: str, ca: Path, headers: dict, body: bytes, concurrency: int, seconds: float,
                   max_requests: int) -> tuple[list[float], float]:
    context = ssl.create_default_context(cafile=str(ca))
    latencies: list[float] = []
    deadline = time.monotonic() + 0.5  # warm-up: connections, handshakes, caches

    async def client(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < deadline and len(latencies) < max_requests:
            started = time.perf_counter()
            async with session.post(url + "/decode", data=body, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    raise SystemExit(f"/decode answered {response.status}")
            latencies.append(time.perf_counter() - started)

    connector = aiohttp.TCPConnector(ssl=context, limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        deadline, latencies[:] = time.monotonic() + seconds, []
        started = time.monotonic()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        elapsed = time.monotonic() - started
    return latencies, elapsed


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process so far, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def report(payloads: int, concurrency: int, latencies: list[float], elapsed: float, server_cpu: float) -> None:
    ordered = sorted(latencies)
    p50 = statistics.median(ordered) * 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    rate = len(ordered) / elapsed
    cpu_per_request = server_cpu / len(ordered) * 1000
    print(f"{payloads:>8} {concurrency:>3} {len(ordered):>8} {rate:>10.0f} {rate * payloads:>12.0f} {p50:>8.2f} "
          f"{p99:>8.2f} {cpu_per_request:>10.2f}", flush=True)


def main_(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="measured time per case (default 3)")
    parser.add_argument("--max-requests", type=int, default=5000, help="cap per case (default 5000)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-codec-") as tmp:
        root = Path(tmp)
        jwks_port, codec_port = free_port(), free_port()
        (root / "bundle.yaml").write_text(CONFIG % jwks_port)
        out = root / "out"
        if main(["init", "--config", str(root / "bundle.yaml"), "--out", str(out), "-q"]) != 0:
            return 1
        ca = out / "trust/ca.pem"
        jwks = start(["serve-jwks", "--out", str(out), "--host", "127.0.0.1", "--port", str(jwks_port)],
                     root / "jwks.log", f"https://localhost:{jwks_port}", ca)
        codec = start(["serve-codec", "--config", str(root / "bundle.yaml"), "--out", str(out), "--host", "127.0.0.1",
                       "--port", str(codec_port), "--jwks-url", f"https://localhost:{jwks_port}/jwks.json",
                       "--quiet-audit"], root / "codec.log", f"https://localhost:{codec_port}", ca)
        try:
            headers = {"Authorization": f"Bearer {(out / 'tokens/system.jwt').read_text().strip()}",
                       "X-Namespace": "orders", "Content-Type": "application/json"}
            print(f"{'payloads':>8} {'c':>3} {'requests':>8} {'req/s':>10} {'payloads/s':>12} {'p50 ms':>8} "
                  f"{'p99 ms':>8} {'server CPU ms/req':>10}")
            for payloads, concurrency in CASES:
                body = request_body(out, payloads)
                cpu = cpu_seconds(codec.pid)
                latencies, elapsed = asyncio.run(run_case(
                    f"https://localhost:{codec_port}", ca, headers, body, concurrency, args.seconds, args.max_requests))
                report(payloads, concurrency, latencies, elapsed, cpu_seconds(codec.pid) - cpu)
        finally:
            for process in (codec, jwks):
                process.terminate()
                process.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main_())
