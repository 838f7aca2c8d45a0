"""Stopping what the tests start in a session of its own (start_new_session=True): the whole
process group, politely first."""

from __future__ import annotations

import os
import signal
import subprocess


def terminate(process: subprocess.Popen, grace: float = 20) -> None:
    """SIGTERM to the process alone (not its group), SIGKILL after `grace` seconds; waits for it."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def stop_group(process: subprocess.Popen | None, grace: float = 10) -> None:
    """SIGTERM to the process group, SIGKILL after `grace` seconds; nothing if it already ended."""
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)
