"""Run a process inside a real memory limit: a cgroup (v1 memory controller, as on these hosts and
under Docker's cgroupfs driver) with the same limit compose gives the service, swap included, so a
process over it is killed by the kernel exactly as in its container.

Nothing skips: without a memory controller the caller gets an exception, and the test fails.
"""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.support.paths import REPO

COMPOSE_FILE = REPO / "docker-compose.prod.yml"
CGROUP_ROOT = Path(os.environ.get("MEMORY_CGROUP_ROOT", "/sys/fs/cgroup/memory"))


def parse_size(text: str) -> int:
    """Compose's memory strings ("256m", "1g", "512k", bytes) in bytes; compose counts in 1024s."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = text.strip().lower().removesuffix("b")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def compose_memory_limit(service: str) -> int:
    """The service's mem_limit in docker-compose.prod.yml as compose resolves it: `${VAR:-256m}`
    takes VAR from the environment, else the default."""
    value = str(yaml.safe_load(COMPOSE_FILE.read_text())["services"][service]["mem_limit"])
    value = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: os.environ.get(m.group(1)) or m.group(2), value)
    return parse_size(value)


@dataclass
class MemoryLimit:
    """A cgroup with `limit` bytes of memory (and no swap beyond it). Use as a context manager;
    start processes in it with `popen`; read the peak and the OOM kills at any time."""

    limit: int
    name: str = ""

    def __post_init__(self):
        if not (CGROUP_ROOT / "memory.limit_in_bytes").is_file():
            raise RuntimeError(f"no cgroup v1 memory controller at {CGROUP_ROOT}")
        self.path = CGROUP_ROOT / (self.name or f"temporal-bundle-test-{uuid.uuid4().hex[:12]}")

    def __enter__(self) -> "MemoryLimit":
        self.path.mkdir()
        (self.path / "memory.limit_in_bytes").write_text(str(self.limit))
        swap = self.path / "memory.memsw.limit_in_bytes"
        if swap.exists():  # memory + swap = the limit: nothing to swap into, as with --memory alone
            swap.write_text(str(self.limit))
        return self

    def __exit__(self, *exc) -> None:
        for pid in self.pids():
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        for _ in range(100):
            try:
                self.path.rmdir()
                return
            except OSError:  # tasks still exiting
                import time

                time.sleep(0.05)

    def popen(self, argv, **kwargs) -> subprocess.Popen:
        """Start argv with its own pid in the cgroup before it runs a line of its program."""
        procs = str(self.path / "cgroup.procs")

        def enter():
            with open(procs, "w") as handle:
                handle.write(str(os.getpid()))

        return subprocess.Popen(argv, preexec_fn=enter, **kwargs)

    def pids(self) -> list[int]:
        return [int(line) for line in (self.path / "cgroup.procs").read_text().split()]

    @property
    def peak(self) -> int:
        """The highest charge so far (RSS + page cache + kernel memory charged to the group)."""
        return int((self.path / "memory.max_usage_in_bytes").read_text())

    @property
    def usage(self) -> int:
        return int((self.path / "memory.usage_in_bytes").read_text())

    @property
    def oom_kills(self) -> int:
        for line in (self.path / "memory.oom_control").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0
