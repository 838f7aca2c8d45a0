"""The bundle's own servers (serve-exchange, serve-ui-gate, serve-codec, ...) as subprocesses of a
test, each with its log in the work directory, waited for until it listens."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from tests.support.processes import stop_group
from tests.support.waits import wait_until


class BundleServices:
    def __init__(self, work: Path, config: Path, bundle: Path):
        self.work, self.config_args = work, ["--config", str(config), "--out", str(bundle)]
        self.processes: list[subprocess.Popen] = []

    def start(self, name: str, argv: list[str], port: int) -> subprocess.Popen:
        """`python -m bootstrap ARGV --config --out`, logging to WORK/NAME.log, once it listens on port."""
        log = self.work / f"{name}.log"
        process = subprocess.Popen([sys.executable, "-m", "bootstrap", *argv, *self.config_args],
                                   stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(process)

        def listening():
            assert process.poll() is None, log.read_text()[-2000:]
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_until(listening, 30, name)
        return process

    def stop(self) -> None:
        for process in self.processes:
            stop_group(process)
