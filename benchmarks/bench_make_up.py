"""`make up` time to ready: the secured stack (mTLS everywhere, JWT authorization) beside the same
stack with TLS and authorization off, measured in one run on the same engine and images.

    python3 benchmarks/bench_make_up.py [--rounds N] [--shards N] [--json]

Each round runs, for each variant in turn, a cold start (fresh volumes: bootstrap, initdb, schema
creation, namespace registration) and a warm restart (`docker compose down` + `make up`, volumes
kept); it prints every round's figures, when each service started and became ready (from
`docker events`), the CPU seconds each service and the whole machine used meanwhile (from the
containers' cgroups and /proc/stat, on a local engine), and the medians. "Ready" is
what `make up` waits for: every long-running service healthy, every one-shot job done.
The plaintext variant is docker-compose.prod.yml plus docker/bench/docker-compose.plain.yml and
a copy of the rendered server config without global.tls, global.authorization and database TLS.
Images are the locally built stand-ins (scripts/build-images.sh standins); building them is not
timed. Everything runs on this machine's Docker engine; the stacks are removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bootstrap.core.config import load_config  # noqa: E402
from bootstrap.ops.render import render_all  # noqa: E402
from tests.support.compose_stack import ComposeStack, build_standin_images, unique_project  # noqa: E402

PLAIN_OVERRIDE = "docker/bench/docker-compose.plain.yml"


def plain_server_config(bundle_yaml: Path, out_dir: Path) -> Path:
    """The server config and dynamic config the bootstrap renders, with TLS (frontend, internode,
    membership, database) and authorization taken out; the dynamic config is mounted beside it."""
    rendered = render_all(load_config(bundle_yaml))
    doc = yaml.safe_load(rendered["temporal.yaml"])
    doc["global"].pop("tls", None)
    doc["global"].pop("authorization", None)
    for store in doc["persistence"]["datastores"].values():
        store.get("sql", {}).pop("tls", None)
    doc["dynamicConfigClient"]["filepath"] = "/bench/dynamic_config.yaml"
    dynamic = yaml.safe_load(rendered["dynamic_config.yaml"])
    dynamic.pop("system.enableRingpopTLS", None)  # without global.tls the listener cannot start
    out = out_dir / "temporal.yaml"
    out.write_text("# Benchmark only: TLS and authorization removed.\n" + yaml.safe_dump(doc, sort_keys=False))
    (out_dir / "dynamic_config.yaml").write_text(yaml.safe_dump(dynamic, sort_keys=False))
    for path in (out, out_dir / "dynamic_config.yaml"):
        path.chmod(0o644)
    return out


class Timeline:
    """`docker events` of one compose project while `make up` runs: when each service's container
    started, turned healthy and exited, in seconds from the start of `make up`."""

    def __init__(self, project: str):
        self.t0 = time.time()
        self.proc = subprocess.Popen(
            ["docker", "events", "--filter", f"label=com.docker.compose.project={project}", "--format", "{{json .}}"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        # Drained as it comes: health checks make thousands of exec events, and a full pipe would
        # stall the stream (later events lost).
        self.lines: list[str] = []
        self.containers: dict[str, str] = {}  # id -> compose service, as they are created
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            if '"create"' in line:
                event = json.loads(line)
                service = event.get("Actor", {}).get("Attributes", {}).get("com.docker.compose.service")
                if event.get("Action") == "create" and service:
                    self.containers[event["Actor"]["ID"]] = service

    def stop(self) -> dict[str, dict[str, float]]:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.reader.join(timeout=30)
        phases: dict[str, dict[str, float]] = {}
        for line in self.lines:
            event = json.loads(line)
            service = event.get("Actor", {}).get("Attributes", {}).get("com.docker.compose.service")
            action = {"start": "started", "die": "exited", "health_status: healthy": "healthy"}.get(event.get("Action") or event.get("status"))
            if service and action:
                at = event["timeNano"] / 1e9 - self.t0
                phases.setdefault(service, {}).setdefault(action, round(at, 2))
        return phases


CGROUP_USAGE = (  # CPU seconds used so far by one container, where the local engine keeps it
    ("/sys/fs/cgroup/cpuacct/docker/{id}/cpuacct.usage", 1e9),  # cgroup v1, cgroupfs driver
    ("/sys/fs/cgroup/docker/{id}/cpu.stat", 1e6),  # cgroup v2, cgroupfs driver
    ("/sys/fs/cgroup/system.slice/docker-{id}.scope/cpu.stat", 1e6),  # cgroup v2, systemd driver
)


def host_busy_cpu_s() -> float | None:
    """CPU seconds this machine has spent not idle since boot (all cores)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return None
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds per compose service while `make up` runs, read from each container's cgroup
    every 0.1 s (one-shot jobs' cgroups vanish when they exit: their last reading counts), plus
    the whole machine's busy CPU, which includes the engine's own work (container starts, health
    check execs). Containers are learnt from the timeline's event stream: polling `docker ps`
    would add load to what is measured. Only on a local engine; elsewhere it reports nothing."""

    def __init__(self, timeline: Timeline):
        self.timeline, self.usage, self.done = timeline, {}, threading.Event()
        self.host_start = host_busy_cpu_s()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _read(self, container: str) -> float | None:
        for pattern, scale in CGROUP_USAGE:
            try:
                text = Path(pattern.format(id=container)).read_text()
            except OSError:
                continue
            value = text.split()[1] if text.startswith("usage_usec") else text.split()[0]
            return int(value) / scale
        return None

    def _sample(self) -> None:
        while not self.done.is_set():
            for container in list(self.timeline.containers):
                value = self._read(container)
                if value is not None:
                    self.usage[container] = value
            self.done.wait(0.1)

    def stop(self) -> dict[str, float]:
        host_end = host_busy_cpu_s()
        self.done.set()
        self.thread.join(timeout=10)
        by_service: dict[str, float] = {}
        for container, seconds in self.usage.items():
            service = self.timeline.containers[container]
            by_service[service] = round(by_service.get(service, 0.0) + seconds, 2)
        if self.host_start is not None and host_end is not None:
            by_service["(machine)"] = round(host_end - self.host_start, 2)
        return by_service


def timed_up(stack: ComposeStack) -> tuple[float, dict]:
    timeline = Timeline(stack.project)
    meter = CpuMeter(timeline)
    time.sleep(0.3)  # `docker events` subscribes before anything starts
    timeline.t0 = time.time()
    try:
        elapsed = stack.up()
    except BaseException:
        timeline.stop()
        meter.stop()
        raise
    cpu = meter.stop()
    phases = timeline.stop()
    phases["cpu_s"] = cpu
    return elapsed, phases


def pg_connections(stack: ComposeStack) -> dict[str, int]:
    """The server's PostgreSQL connections per database right after ready (pool sizing)."""
    out = stack.compose(
        "exec", "-T", "postgresql", "psql", "--host=/var/run/postgresql", "--username=postgres", "--no-psqlrc",
        "-tAc", "SELECT datname, count(*) FROM pg_stat_activity WHERE usename <> 'postgres' "
                "AND datname IS NOT NULL GROUP BY 1 ORDER BY 1",
    ).stdout
    return {db: int(n) for db, n in (line.split("|") for line in out.split() if "|" in line)}


def one_round(stack: ComposeStack) -> dict:
    """A cold start on fresh volumes, then a warm restart (`down` + `make up`, volumes kept)."""
    try:
        cold, cold_phases = timed_up(stack)
        cold_phases["pg_connections"] = pg_connections(stack)
        stack.down()
        warm, warm_phases = timed_up(stack)
        return {"cold_s": round(cold, 2), "warm_s": round(warm, 2), "cold_phases": cold_phases, "warm_phases": warm_phases}
    finally:
        log = stack.teardown()
        stack.log_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(log, stack.log_dir / f"{stack.project}.log")


def make_stacks(tmp: Path, images: dict, args) -> tuple[ComposeStack, ComposeStack]:
    secured = ComposeStack(unique_project("tbbenchsec"), tmp / "secured", images, history_shards=args.shards)
    plain = ComposeStack(unique_project("tbbenchplain"), tmp / "plain", images, history_shards=args.shards,
                         compose_files=("docker-compose.prod.yml", PLAIN_OVERRIDE))
    for stack in (secured, plain):
        stack.extra_env["HEALTHCHECK_INTERVAL"] = args.healthcheck_interval
    config = plain_server_config(plain.config, plain.workdir)
    plain.extra_env["BENCH_PLAIN_TEMPORAL_CONFIG"] = str(config)
    plain.extra_env["BENCH_PLAIN_DYNAMIC_CONFIG"] = str(config.with_name("dynamic_config.yaml"))
    plain.extra_env["BENCH_PLAIN_NAMESPACES"] = " ".join(ns.name for ns in load_config(plain.config).namespaces)
    plain.compose("config", "--quiet")  # the override must validate before anything is timed
    return secured, plain


def phase_line(phases: dict) -> str:
    keys = ("bootstrap", "postgresql", "temporal-schema", "jwks", "dex", "temporal", "temporal-register-namespaces",
            "ui-gate", "temporal-ui")
    parts = []
    for key in keys:
        p = phases.get(key, {})
        mark = p.get("healthy", p.get("exited"))
        if mark is not None:
            parts.append(f"{key} {p.get('started', float('nan')):.1f}->{mark:.1f}")
    if "pg_connections" in phases:
        parts.append(f"pg connections {phases['pg_connections']}")
    return "  ".join(parts)


def cpu_line(phases: dict) -> str:
    cpu = dict(phases.get("cpu_s", {}))
    if not cpu:
        return "cpu: not measurable on this engine"
    machine = cpu.pop("(machine)", None)
    services = " ".join(f"{name} {seconds:.1f}" for name, seconds in sorted(cpu.items(), key=lambda kv: -kv[1]))
    head = f"cpu s: machine {machine:.1f}, containers {sum(cpu.values()):.1f}" if machine is not None else "cpu s:"
    return f"{head} ({services})"


def report(results: list[dict], shards: str, interval: str) -> None:
    print(f"make up: time to ready (all long-running services healthy, one-shot jobs done); "
          f"{shards} history shards; health checks every {interval}; {len(results)} rounds, variants interleaved")
    for i, r in enumerate(results, 1):
        for kind in ("cold", "warm"):
            s, p = r["secured"][f"{kind}_s"], r["plaintext"][f"{kind}_s"]
            print(f"round {i} {kind}: secured {s:5.1f}s  plaintext {p:5.1f}s  x{s / p:.2f}")
            for name in ("secured", "plaintext"):
                print(f"    {name:<9} {phase_line(r[name][f'{kind}_phases'])}")
                print(f"    {'':<9} {cpu_line(r[name][f'{kind}_phases'])}")
    for kind in ("cold", "warm"):
        s = statistics.median(r["secured"][f"{kind}_s"] for r in results)
        p = statistics.median(r["plaintext"][f"{kind}_s"] for r in results)
        ratios = [r["secured"][f"{kind}_s"] / r["plaintext"][f"{kind}_s"] for r in results]
        print(f"median {kind}: secured {s:.1f}s  plaintext {p:.1f}s  x{s / p:.2f}  "
              f"(per-round ratios {' '.join(f'x{x:.2f}' for x in ratios)})")
        machine = {name: [r[name][f"{kind}_phases"].get("cpu_s", {}).get("(machine)") for r in results]
                   for name in ("secured", "plaintext")}
        if all(v is not None for values in machine.values() for v in values):
            print(f"median {kind} machine cpu: secured {statistics.median(machine['secured']):.1f}s  "
                  f"plaintext {statistics.median(machine['plaintext']):.1f}s (on {os.cpu_count()} cores)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of cold + warm per variant (default: 3)")
    parser.add_argument("--shards", type=int, default=0,
                        help="num_history_shards for both stacks (default: bundle.example.yaml's)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--logs", type=Path, default=REPO / "build" / "bench-make-up-logs",
                        help="where each stack's compose logs are kept (default: build/bench-make-up-logs)")
    parser.add_argument(
        "--healthcheck-interval", default="1s",
        help="HEALTHCHECK_INTERVAL for both stacks (default: 1s, so readiness is seen within a second; "
        "operators run with 5s)",
    )
    args = parser.parse_args()

    images = build_standin_images()
    args.shards = args.shards or yaml.safe_load((REPO / "bundle.example.yaml").read_text())["persistence"]["num_history_shards"]
    shards = args.shards
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-make-up-") as tmp:
        for i in range(args.rounds):
            secured, plain = make_stacks(Path(tmp) / f"round{i}", images, args)
            for stack in (secured, plain):
                stack.log_dir = args.logs
            results.append({"secured": one_round(secured), "plaintext": one_round(plain)})
            print(f"round {i + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        report(results, str(shards), args.healthcheck_interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
