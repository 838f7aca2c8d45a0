"""The key service (workers fetch their namespaces' rings from the codec server): what a worker
pays for holding no KEK.

    python benchmarks/bench_key_service.py [--seconds 3] [--workers 100]

A bundle as init makes it (per-namespace custody); `serve-codec` started as a process, as compose starts
it (TLS on, client certificates asked for, audit lines on, written to a file). Prints:
  - SDK encode+decode throughput (EncryptionCodec, 1 KB payloads, batches of 1 and of 50) with
    local keys (KeyringFile over the ring and KEK files) and with the key service (cached ring);
  - a ring fetch from the key service at concurrency 1 (kept-alive mutual-TLS connection): p50,
    p99; and with a new connection each time (what a starting worker pays);
  - `--workers` workers starting at once, each a new KeyServiceKeys fetching its ring: wall time,
    p50/p99/max fetch, failures.
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
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from temporalio.api.common.v1 import Payload  # noqa: E402

from bootstrap.cli import main  # noqa: E402
from bootstrap.core.codec import EncryptionCodec, KeyringFile  # noqa: E402
from bootstrap.core.tokens import SigningKey, mint_token  # noqa: E402
from bootstrap.key_client import KeyServiceKeys  # noqa: E402
from tests.support.codec import codec_config  # noqa: E402
from tests.support.ports import free_port  # noqa: E402
from tests.support.waits import wait_until  # noqa: E402

CONFIG = codec_config("bench-key-service", roles=("system", "worker", "client"))


def bundle(work: Path) -> Path:
    config, out = work / "bundle.yaml", work / "out"
    config.write_text(CONFIG)
    assert main(["init", "--config", str(config), "--out", str(out), "-q"]) == 0  # one ring and KEK per namespace
    kid = (out / "private/jwt/active").read_text().strip()
    key = SigningKey.from_pem((out / f"private/jwt/{kid}.key").read_bytes())
    from datetime import timedelta

    token = mint_token(key, role="worker", permissions=["orders:write"], issuer="temporal-bundle", audience="temporal",
                       lifetime=timedelta(hours=1)).encoded
    (work / "worker.jwt").write_text(token)
    return out


def serve(work: Path, out: Path, port: int) -> subprocess.Popen:
    argv = [sys.executable, "-m", "bootstrap", "serve-codec", "--config", str(work / "bundle.yaml"), "--out", str(out),
            "--port", str(port), "--host", "127.0.0.1"]
    process = subprocess.Popen(argv, stdout=open(work / "codec.log", "wb"), stderr=subprocess.STDOUT,
                               start_new_session=True, cwd=Path(__file__).resolve().parent.parent)
    context = ssl.create_default_context(cafile=str(out / "trust/ca.pem"))

    def healthy():
        try:
            return urllib.request.urlopen(f"https://localhost:{port}/healthz", context=context, timeout=2).status == 200
        except OSError:
            return False

    wait_until(healthy, 30, "serve-codec health")
    return process


def client(work: Path, out: Path, port: int, **options) -> KeyServiceKeys:
    return KeyServiceKeys(f"https://localhost:{port}/v1/keys", cafile=out / "trust/ca.pem", cert=out / "clients/worker.pem",
                          key=out / "clients/worker.key", token_file=work / "worker.jwt", **options)


def paired(local: EncryptionCodec, remote: EncryptionCodec, batch: int, seconds: float) -> tuple[float, float]:
    """Payloads/s of encode+decode for each codec, measured in alternating calls, so that the
    host's load (this runs beside other work) falls on both alike."""
    payloads = [Payload(metadata={"encoding": b"binary/plain"}, data=os.urandom(1024)) for _ in range(batch)]

    async def loop() -> tuple[float, float]:
        spent, count = [0.0, 0.0], 0
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            for i, codec in enumerate((local, remote) if count % 2 else (remote, local)):
                start = time.perf_counter()
                await codec.decode(await codec.encode(payloads))
                spent[i if count % 2 else 1 - i] += time.perf_counter() - start
            count += 1
        return count * batch / spent[0], count * batch / spent[1]

    asyncio.run(loop())  # warm-up
    return asyncio.run(loop())


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000  # noqa: E731
    return f"p50 {p(0.5):.2f} ms, p99 {p(0.99):.2f} ms, max {ordered[-1] * 1000:.2f} ms"


def fetches(keys: KeyServiceKeys, count: int, fresh: bool) -> list[float]:
    took = []
    for _ in range(count):
        if fresh:
            keys.close()
        start = time.perf_counter()
        keys.ring("orders", refresh=True)
        took.append(time.perf_counter() - start)
    return took


def stampede(work: Path, out: Path, port: int, workers: int) -> tuple[float, list[float], list[str]]:
    barrier, took, failed = threading.Barrier(workers), [], []
    lock = threading.Lock()

    def one():
        keys = client(work, out, port)
        barrier.wait()
        start = time.perf_counter()
        try:
            keys.check("orders")
            with lock:
                took.append(time.perf_counter() - start)
        except Exception as exc:  # noqa: BLE001 - counted and shown
            with lock:
                failed.append(str(exc))
        finally:
            keys.close()

    threads = [threading.Thread(target=one) for _ in range(workers)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start, took, failed


def main_() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--workers", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5, help="alternated throughput rounds; the median is printed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        out, port = bundle(work), free_port()
        process = serve(work, out, port)
        try:
            local = EncryptionCodec(KeyringFile(out / "codec-keys/keys.json"), "orders")
            remote_keys = client(work, out, port)
            remote = EncryptionCodec(remote_keys, "orders")
            for batch in (1, 50):
                rounds = [paired(local, remote, batch, args.seconds) for _ in range(args.rounds)]
                a, b = statistics.median(r[0] for r in rounds), statistics.median(r[1] for r in rounds)
                print(f"encode+decode, batch {batch:>2}: local keys {a:,.0f} payloads/s, key service (cached) "
                      f"{b:,.0f} payloads/s ({(b - a) / a * 100:+.1f} %)")
            print(f"fetch, c=1, kept-alive connection: {percentiles(fetches(remote_keys, 2000, fresh=False))}")
            print(f"fetch, c=1, new TLS connection each: {percentiles(fetches(remote_keys, 300, fresh=True))}")
            wall, took, failed = stampede(work, out, port, args.workers)
            print(f"{args.workers} workers starting at once: all done in {wall * 1000:.0f} ms; "
                  f"{percentiles(took) if took else 'no fetch succeeded'}; {len(failed)} failed"
                  + (f" (first: {failed[0]})" if failed else ""))
        finally:
            process.terminate()
            process.wait(10)


if __name__ == "__main__":
    main_()
