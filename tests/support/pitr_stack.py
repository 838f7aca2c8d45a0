"""Host side of the point-in-time recovery test and benchmark: a steady load of workflow starts
through the real server (tests/support/pitr_load.py in the bundle image on the edge network), the
loss of the postgres volume, which acknowledged workflows a restore brought back; and a repository
volume of a fixed size (a loop-mounted ext4 file) that a test can fill to the last block."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.support.compose_stack import ComposeStack, run
from tests.support.paths import REPO


def load_argv(stack: ComposeStack, name: str, *args: str) -> list[str]:
    return ["docker", "run", "--rm", "--name", name, "--network", stack.network("edge"), "--read-only",
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges:true",
            "-v", f"{stack.volume('bundle-trust')}:/bundle/trust:ro",
            "-v", f"{stack.volume('bundle-clients')}:/bundle/clients:ro",
            "-v", f"{stack.volume('bundle-tokens')}:/bundle/tokens:ro",
            "-v", f"{REPO / 'tests'}:/opt/e2e/tests:ro", "--workdir", "/opt/e2e",
            stack.images["BUNDLE_IMAGE"], "python3", "-m", "tests.support.pitr_load", *args]


@dataclass
class Load:
    acks: dict[str, float]  # workflow id -> when the server acknowledged its start (Unix time)
    started: float
    middle: float  # a time inside the load, for a restore to a time
    loss: float  # when PostgreSQL was killed

    @property
    def total(self) -> int:
        return max(int(i.rsplit("-", 1)[1]) for i in self.acks) + 10


def load_then_lose_postgres(stack: ComposeStack, prefix: str, rate: float, before_middle: float,
                            after_middle: float) -> Load:
    """Start workflows at `rate` per second; half-way note the time; then kill PostgreSQL (the loss),
    stop the load a few seconds later, stop every service and remove the postgres-data volume."""
    name = f"{stack.project}-pitr-load-{prefix}"
    loader = subprocess.Popen(load_argv(stack, name, "start", prefix, str(rate)), stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    try:
        wait_ready(loader)
        started = time.time()
        time.sleep(before_middle)
        middle = time.time()
        time.sleep(after_middle)
        stack.compose("kill", "postgresql")
        loss = time.time()
        time.sleep(3)
    finally:
        run(["docker", "rm", "-f", name], check=False)
        lines = loader.communicate(timeout=60)[0].splitlines()
    acks = {}
    for line in lines:
        if line.startswith("{"):
            doc = json.loads(line)
            if "id" in doc:
                acks[doc["id"]] = doc["t"]
    stack.compose("stop", timeout=300)
    stack.compose("rm", "--force", "postgresql", "db-backup", timeout=120)
    run(["docker", "volume", "rm", stack.volume("postgres-data")])
    return Load(acks, started, middle, loss)


def wait_ready(loader: subprocess.Popen, timeout: float = 120) -> None:
    """The load's clock starts once its client is connected: on a busy host the container's start
    and the connection take seconds that would otherwise count as a load that fell short."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = loader.stdout.readline()
        if not line:
            raise AssertionError("the pitr load ended before it was ready")
        if '"ready"' in line:
            return
    raise AssertionError(f"the pitr load was not ready within {timeout:.0f} s")


def present(stack: ComposeStack, prefix: str, total: int) -> set[str]:
    out = stack.run_client("present", prefix, str(total), module="tests.support.pitr_load", timeout=900)
    return set(out["present"])


@contextlib.contextmanager
def size_limited_volume(workdir: Path, volume: str, size: str, owner: str) -> Iterator[Path]:
    """A compose override that puts `volume` on an ext4 file system of `size` (a sparse file, loop
    mounted on the host, no reserved blocks): filling it is a real ENOSPC for whoever writes there,
    without touching the engine's own disk. Yields the override file; unmounts at the end."""
    image, mount = workdir / f"{volume}.ext4", workdir / f"{volume}.mnt"
    run(["truncate", "-s", size, str(image)])
    run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)])
    mount.mkdir()
    run(["mount", "-o", "loop", str(image), str(mount)])
    try:
        run(["chown", owner, str(mount)])
        mount.chmod(0o750)
        override = workdir / f"{volume}.override.yml"
        override.write_text(yaml.safe_dump({"volumes": {volume: {"driver_opts": {
            "type": "none", "o": "bind", "device": str(mount)}}}}))
        yield override
    finally:
        if run(["umount", str(mount)], check=False).returncode != 0:
            run(["umount", "--lazy", str(mount)], check=False)
        image.unlink(missing_ok=True)
