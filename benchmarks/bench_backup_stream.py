"""`backup create` / `backup dump` against a real PostgreSQL, as `make backup` / `make restore`
pipe them: pg_dump --format=custom | base64 framing | bootstrap (seal, streamed to the archive),
and bootstrap (authenticate, then stream) | pg_restore. Compared with plain `pg_dump -Fc` to a
file and plain `pg_restore` from it, on the same host.

    python benchmarks/bench_backup_stream.py [--gib 1.5] [--rounds 2] [--keep] [--history [--payload-kib 1024]]

Starts a throw-away cluster (Debian's PostgreSQL, initdb in a temp dir, unix socket only, fsync
off), fills database `temporal` with --gib of rows shaped like Temporal history: 8 KiB bytea
each, mostly incompressible (payloads are encrypted by the codec) with a compressible JSON-ish
column beside. With --history the database is real Temporal history instead: the real
temporal-server (mTLS + JWT, tests/support/cluster.py) on that PostgreSQL, workflows started
through its frontend with random (incompressible) inputs of --payload-kib until database
`temporal` holds --gib; the server is stopped before the rounds. Prints per round: plain pg_dump time, bundle backup time and its ratio, the
bootstrap's peak RSS (VmHWM) and CPU time, archive and dump sizes; verify time; restore time
of both paths (into an emptied database). Runs as root (the server runs as user postgres).
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter  # noqa: E402

from bootstrap.client import connect  # noqa: E402
from tests.support.bundles import make_bundle  # noqa: E402
from tests.support.cluster import LocalCluster  # noqa: E402
from tests.support.ports import free_port  # noqa: E402
from tests.support.waits import wait_until  # noqa: E402

PASSPHRASE = "benchmark passphrase, long enough"
ROW_BYTES = 8192
MEASURE = ("import resource, sys; from bootstrap.cli import main; code = main(sys.argv[1:]); "
           "peak = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1]; "
           "u = resource.getrusage(resource.RUSAGE_SELF); "
           "sys.stderr.write(f'measure {peak} {u.ru_utime + u.ru_stime:.2f}\\n'); sys.exit(code)")


class Cluster:
    def __init__(self, work: Path):
        self.bin = Path(sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))[-1]).parent
        self.work, self.port, self.process = work, free_port(), None

    @property
    def conn(self) -> str:
        return f"--host={self.work} --port={self.port} --username=postgres"

    @classmethod
    def of(cls, server) -> "Cluster":
        """The running PostgreSQL of a LocalCluster (tests/support/postgres.py), over its unix socket."""
        cluster = cls(server.workdir)
        cluster.port = server.port
        return cluster

    def start(self) -> "Cluster":
        self.work.mkdir(parents=True, exist_ok=True)
        self.work.chmod(0o755)
        shutil.chown(self.work, "postgres", "postgres")
        data = self.work / "pgdata"
        as_postgres(f"{self.bin}/initdb -D {data} -U postgres --auth-local=trust >/dev/null")
        with open(data / "postgresql.conf", "a") as conf:
            conf.write(f"listen_addresses = ''\nport = {self.port}\nunix_socket_directories = '{self.work}'\n"
                       "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_wal_size = '4GB'\n")
        self.process = subprocess.Popen(["runuser", "-u", "postgres", "--", f"{self.bin}/postgres", "-D", str(data)],
                                        stdout=open(self.work / "postgres.log", "wb"), stderr=subprocess.STDOUT)
        wait_until(lambda: self.psql("select 1", check=False).returncode == 0, 60, "PostgreSQL to accept connections")
        return self

    def psql(self, sql: str, db: str = "postgres", check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["runuser", "-u", "postgres", "--", f"{self.bin}/psql", *self.conn.split(), "-d", db,
                               "--no-psqlrc", "-tAc", sql], capture_output=True, text=True, check=check)

    def tool(self, name: str) -> str:
        return f"runuser -u postgres -- {self.bin}/{name} {self.conn}"

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(60)


def as_postgres(command: str) -> None:
    subprocess.run(["runuser", "-u", "postgres", "--", "bash", "-c", command], check=True)


def fill(cluster: Cluster, gib: float) -> None:
    """Rows of ROW_BYTES: sha256 chains (incompressible, like codec-encrypted payloads) plus a
    short JSON-ish text, in batches so progress shows."""
    cluster.psql("CREATE DATABASE temporal")
    cluster.psql("CREATE TABLE history_node (shard_id int, tree_id bigint, node_id bigint, txn_id bigint, "
                 "data bytea, data_encoding text, PRIMARY KEY (shard_id, tree_id, node_id, txn_id))", db="temporal")
    cluster.psql("ALTER TABLE history_node ALTER COLUMN data SET STORAGE EXTERNAL", db="temporal")  # no TOAST compression
    rows, batch = int(gib * (1 << 30) / ROW_BYTES), 20_000
    for start in range(0, rows, batch):
        cluster.psql(
            f"INSERT INTO history_node SELECT g % 512, g / 7, g, g, "
            f"(SELECT string_agg(sha256(int8send(g * 1000 + i)), '') FROM generate_series(1, {ROW_BYTES // 32}) i), "
            f"'{{\"eventType\":\"WorkflowTaskCompleted\",\"attempt\":' || (g % 5) || '}}' "
            f"FROM generate_series({start}, {min(start + batch, rows) - 1}) g", db="temporal")
        print(f"  filled {min(start + batch, rows)}/{rows} rows", file=sys.stderr, flush=True)


def database_bytes(cluster: Cluster) -> int:
    return int(cluster.psql("SELECT pg_database_size('temporal')").stdout.strip())


def fill_through_temporal(temporal: LocalCluster, gib: float, payload_kib: int, concurrency: int = 8) -> int:
    """Workflows started through the real frontend until database `temporal` holds `gib`; how many.
    No worker runs them: each start writes its input into history (WorkflowExecutionStarted)."""
    database = Cluster.of(temporal.postgres)

    async def run() -> int:
        quiet = Runtime(telemetry=TelemetryConfig(logging=LoggingConfig(filter=TelemetryFilter("ERROR", "ERROR"))))
        client = await connect(temporal.address, bundle_dir=temporal.bundle, role="client", server_name="localhost",
                               runtime=quiet)  # not one warning per start about payloads over 512 KiB
        started, began = 0, time.monotonic()
        while database_bytes(database) < gib * 2**30:
            await asyncio.gather(*(client.start_workflow(
                "HistoryBench", os.urandom(payload_kib * 1024), id=f"history-{started + i}", task_queue="history-bench")
                for i in range(concurrency * 4)))
            started += concurrency * 4
            if started % (concurrency * 64) == 0:
                print(f"  {started} workflows, {database_bytes(database) / 2**30:.2f} GiB, "
                      f"{time.monotonic() - began:.0f} s", file=sys.stderr, flush=True)
        return started
    return asyncio.run(run())


def timed(command: str, env: dict | None = None) -> tuple[float, str]:
    started = time.monotonic()
    done = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, env=env)
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {command}\n{done.stderr[-3000:]}")
    return elapsed, done.stderr


def bootstrap(args: str) -> str:
    return f"{sys.executable} -c \"{MEASURE}\" {args}"


def measure_of(stderr: str) -> tuple[int, float]:
    line = [l for l in stderr.splitlines() if l.startswith("measure ")][-1].split()
    return int(line[1]) // 1024, float(line[2])


def round_(cluster: Cluster, bundle, work: Path, index: int) -> dict:
    env = {**os.environ, "BACKUP_PASSPHRASE": PASSPHRASE, "PYTHONPATH": str(REPO)}
    common = f"--config {bundle.config_path} --out {bundle.root}"
    plain, archive = work / f"plain-{index}.dump", work / f"bundle-{index}.tbak"
    plain_s, _ = timed(f"{cluster.tool('pg_dump')} --format=custom temporal > {plain}")
    backup_s, err = timed(f"{{ echo 'dump temporal'; {cluster.tool('pg_dump')} --format=custom temporal | base64; echo end; }}"
                          f" | {bootstrap(f'backup create --archive {archive} --dumps-stdin {common}')} >/dev/null", env)
    backup_rss, backup_cpu = measure_of(err)
    verify_s, err = timed(bootstrap(f"backup verify --archive {archive} {common}") + " >/dev/null", env)
    verify_rss, _ = measure_of(err)
    cluster.psql("DROP DATABASE temporal")
    plain_restore_s, _ = timed(f"{cluster.tool('pg_restore')} --dbname=postgres --create --exit-on-error < {plain}")
    cluster.psql("DROP DATABASE temporal")
    restore_s, err = timed(bootstrap(f"backup dump --archive {archive} --database temporal {common}")
                           + f" | {cluster.tool('pg_restore')} --dbname=postgres --create --exit-on-error", env)
    restore_rss, restore_cpu = measure_of(err)
    result = {"plain_dump_s": plain_s, "backup_s": backup_s, "ratio": backup_s / plain_s, "backup_rss_mib": backup_rss,
              "backup_cpu_s": backup_cpu, "dump_mib": plain.stat().st_size / 2**20,
              "archive_mib": archive.stat().st_size / 2**20, "verify_s": verify_s, "verify_rss_mib": verify_rss,
              "plain_restore_s": plain_restore_s, "restore_s": restore_s, "restore_rss_mib": restore_rss,
              "restore_cpu_s": restore_cpu}
    plain.unlink()
    archive.unlink()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.5, help="table data to generate (GiB)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="leave the work directory")
    parser.add_argument("--history", action="store_true", help="real Temporal history, through the server")
    parser.add_argument("--payload-kib", type=int, default=1024, help="with --history: each workflow's input")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-backup-"))
    work.chmod(0o755)
    temporal = cluster = None
    try:
        bundle = make_bundle(work / "bundle")
        if args.history:
            temporal = LocalCluster(work / "temporal", driver="postgres", namespaces=("default",)).start_registered()
            began = time.monotonic()
            count = fill_through_temporal(temporal, args.gib, args.payload_kib)
            print(f"history: {count} workflows of {args.payload_kib} KiB inputs started through the frontend "
                  f"in {time.monotonic() - began:.0f} s")
            temporal.stop_server()
            cluster = Cluster.of(temporal.postgres)
        else:
            cluster = Cluster(work / "pg").start()
            fill(cluster, args.gib)
        cluster.psql("VACUUM ANALYZE", db="temporal")
        print(f"database temporal: {database_bytes(cluster) / 2**30:.2f} GiB on disk; cores: {os.cpu_count()}; "
              f"load average: {os.getloadavg()[0]:.1f}")
        for index in range(args.rounds):
            r = round_(cluster, bundle, work, index)
            print(f"round {index + 1}: pg_dump -Fc {r['plain_dump_s']:.1f} s | backup create {r['backup_s']:.1f} s "
                  f"({r['ratio']:.2f}x), bootstrap peak RSS {r['backup_rss_mib']} MiB, CPU {r['backup_cpu_s']:.1f} s | "
                  f"dump {r['dump_mib']:.0f} MiB, archive {r['archive_mib']:.0f} MiB | verify {r['verify_s']:.1f} s, "
                  f"{r['verify_rss_mib']} MiB | pg_restore {r['plain_restore_s']:.1f} s, backup dump | pg_restore "
                  f"{r['restore_s']:.1f} s, bootstrap {r['restore_rss_mib']} MiB, CPU {r['restore_cpu_s']:.1f} s", flush=True)
    finally:
        if temporal:
            temporal.stop()
        elif cluster:
            cluster.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
