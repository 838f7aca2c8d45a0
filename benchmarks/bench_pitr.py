"""The recovery point under load: workflows start at a steady rate through the real server (mTLS +
JWT, compose stack on stand-in images), PostgreSQL is killed and its volume destroyed, and
`make restore-pitr TIME=latest` restores onto the empty volume from pgBackRest's repository (the
base backup db-backup took by itself, then the archived WAL). Counts the workflows the server
acknowledged before the loss and missing after the restore, and how far back before the loss the
oldest missing one was acknowledged; also the restore's wall time (restore, WAL replay, make up).

    python benchmarks/bench_pitr.py [--archive-timeout 60] [--rate 4] [--seconds 90] [--rounds 1]

Each round runs on a fresh stack of its own (removed afterwards). --archive-timeout is
WAL_ARCHIVE_TIMEOUT (PostgreSQL's archive_timeout), the bound the recovery point is meant to keep.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.compose_stack import ComposeStack, build_standin_images, unique_project  # noqa: E402
from tests.support.pitr_stack import load_then_lose_postgres, present  # noqa: E402


def wait_for_first_backup(stack: ComposeStack, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while stack.make("check-backup", check=False, timeout=120).returncode != 0:
        if time.monotonic() > deadline:
            raise SystemExit("error: db-backup took no good backup in time")
        time.sleep(5)


def one_round(images: dict, args, index: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-pitr-") as work:
        stack = ComposeStack(unique_project("tbbpitr"), Path(work), images,
                             extra_env={"WAL_ARCHIVE_TIMEOUT": str(args.archive_timeout)})
        try:
            stack.up()
            wait_for_first_backup(stack)
            size = stack.compose("exec", "-T", "postgresql", "psql", "--host=/var/run/postgresql", "--username=postgres",
                                 "--no-psqlrc", "-tAc",
                                 "SELECT pg_size_pretty(sum(pg_database_size(datname))) FROM pg_database").stdout.strip()
            load = load_then_lose_postgres(stack, f"bench{index}", args.rate, args.seconds / 2, args.seconds / 2)
            started = time.monotonic()
            result = stack.make("restore-pitr", "TIME=latest", check=False, timeout=1800)
            restore_s = time.monotonic() - started
            if result.returncode != 0:
                raise SystemExit(f"error: restore-pitr failed\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
            back = present(stack, f"bench{index}", load.total)
            lost = {i: t for i, t in load.acks.items() if i not in back}
            return {"acknowledged": len(load.acks), "lost": len(lost),
                    "window_s": round(load.loss - min(lost.values()), 1) if lost else 0.0,
                    "restore_s": round(restore_s, 1), "size": size}
        finally:
            stack.teardown(f"bench-pitr-{index}.log")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive-timeout", type=int, default=60)
    parser.add_argument("--rate", type=float, default=4.0)
    parser.add_argument("--seconds", type=float, default=90.0, help="load before the loss")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    images = build_standin_images()
    print(f"archive_timeout {args.archive_timeout}s, {args.rate}/s for {args.seconds:.0f}s before the loss")
    for index in range(args.rounds):
        r = one_round(images, args, index)
        print(f"round {index + 1}: {r['acknowledged']} acknowledged, {r['lost']} lost, oldest lost acknowledged "
              f"{r['window_s']}s before the loss; restore-pitr (restore, replay, make up) {r['restore_s']}s; "
              f"database {r['size']} at the first backup", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
