"""What one gRPC health check costs, as docker runs it every HEALTHCHECK_INTERVAL in the temporal
and ui-gate containers: grpc-health-probe (today's check) against the checks it replaced, the
hand-framed Python `bundle-healthcheck grpc-health` and `temporal operator cluster health`.

    python3 benchmarks/bench_healthcheck.py [--runs 21]

Starts the real temporal-server from the tests' harness (LocalCluster: mutual TLS + JWT, on
loopback) and runs each check against its frontend over mutual TLS with the bundle's
server/health.pem, --runs times interleaved, each a fresh process as docker starts it. Prints the
median CPU seconds (user + system, from the children's rusage) and wall time per check. Every run
must report the frontend healthy, or the benchmark stops. The Python check is the script as it was
before grpc-health-probe replaced it (git show OLD_CHECK), run by this interpreter.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.cluster import LocalCluster  # noqa: E402

# The last commit with the Python grpc-health check (removed in the next one).
OLD_CHECK = "53a0851:docker/bundle/healthcheck.py"
WORKFLOW_SERVICE = "temporal.api.workflowservice.v1.WorkflowService"


def probe_binary() -> str:
    out = subprocess.run(["bash", str(REPO / "scripts/build-health-probe.sh")], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def old_python_check(directory: Path) -> Path:
    script = directory / "healthcheck-old.py"
    script.write_bytes(subprocess.run(["git", "show", OLD_CHECK], cwd=REPO, capture_output=True, check=True).stdout)
    return script


def checks(cluster: LocalCluster, workdir: Path) -> dict[str, list[str]]:
    """Each check as compose ran it (or runs it), pointed at the harness's frontend."""
    bundle, port = cluster.bundle, cluster.base
    ca, cert, key = bundle / "trust/ca.pem", bundle / "server/health.pem", bundle / "server/health.key"
    return {
        "grpc-health-probe": [probe_binary(), f"-addr=127.0.0.1:{port}", "-tls", f"-tls-ca-cert={ca}",
                              f"-tls-client-cert={cert}", f"-tls-client-key={key}", "-tls-server-name=localhost",
                              f"-service={WORKFLOW_SERVICE}", "-connect-timeout=4s", "-rpc-timeout=3s"],
        "python grpc-health (old)": [sys.executable, str(old_python_check(workdir)), "grpc-health",
                                     f"127.0.0.1:{port}", f"--ca={ca}", f"--cert={cert}", f"--key={key}",
                                     "--server-name=localhost", "--timeout=5"],
        "temporal operator cluster health (old)": [
            cluster.cli_base(None)[0], "operator", "cluster", "health", f"--address=127.0.0.1:{port}",
            f"--tls-ca-path={ca}", f"--tls-cert-path={cert}", f"--tls-key-path={key}",
            "--tls-server-name=localhost", "--command-timeout=5s"],
    }


def run_once(argv: list[str]) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "HOME": tempfile.gettempdir()})
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    output = result.stdout + result.stderr  # the probe logs its verdict on stderr
    if result.returncode != 0 or "SERVING" not in output:
        raise SystemExit(f"error: {Path(argv[0]).name} did not report SERVING: {output}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return f"{os.cpu_count()} cores ({model}), load average {os.getloadavg()[0]:.1f}"


def measure(cases: dict[str, list[str]], runs: int) -> dict[str, list[tuple[float, float]]]:
    for argv in cases.values():
        run_once(argv)  # warm-up: page cache, the server's first handshakes
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    for _ in range(runs):
        for name, argv in cases.items():
            samples[name].append(run_once(argv))
    return samples


def report(samples: dict[str, list[tuple[float, float]]], runs: int) -> None:
    print(f"gRPC health check against temporal-server's frontend (mTLS), {runs} runs each, interleaved; "
          f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {machine()}")
    print(f"{'check':<42}{'CPU s (median)':>16}{'wall s (median)':>17}")
    for name, values in samples.items():
        cpu = statistics.median(v[0] for v in values)
        wall = statistics.median(v[1] for v in values)
        print(f"{name:<42}{cpu:>16.3f}{wall:>17.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=21)
    runs = parser.parse_args().runs
    with tempfile.TemporaryDirectory(prefix="bench-healthcheck-") as tmp:
        cluster = LocalCluster(Path(tmp) / "cluster")
        try:
            cluster.start()
            report(measure(checks(cluster, Path(tmp)), runs), runs)
        finally:
            cluster.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
