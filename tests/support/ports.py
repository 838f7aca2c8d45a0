"""Free loopback ports for the servers the tests start."""

from __future__ import annotations

import fcntl
import os
import socket
import tempfile
from pathlib import Path

from tests.support.waits import HarnessError

# A block found free is claimed for this process's life with a lock file, so test processes side
# by side (CI's three, a developer's) do not both pick it before either server binds it.
CLAIMS = Path(tempfile.gettempdir()) / "temporal-bundle-port-blocks"
_claimed: list[int] = []  # the open lock files: closing one would release its block


def free_port_block(size: int, start: int = 20000) -> int:
    """A base port such that base..base+size-1 and base-300.. (membership) are all free."""
    for base in range(start + 300, 60000, size + 350):
        ports = list(range(base, base + size)) + list(range(base - 300, base - 300 + size))
        if all(port_free(p) for p in ports) and claim(base):
            return base
    raise HarnessError("no free port block")


def claim(base: int) -> bool:
    CLAIMS.mkdir(exist_ok=True)
    fd = os.open(CLAIMS / f"{base}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    _claimed.append(fd)
    return True


def free_port() -> int:
    """A loopback port the kernel has free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False
