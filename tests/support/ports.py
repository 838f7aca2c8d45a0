"""Free loopback ports for the servers the tests start."""

from __future__ import annotations

import socket

from tests.support.waits import HarnessError


def free_port_block(size: int, start: int = 20000) -> int:
    """A base port such that base..base+size-1 and base-300.. (membership) are all free."""
    for base in range(start + 300, 60000, size + 350):
        ports = list(range(base, base + size)) + list(range(base - 300, base - 300 + size))
        if all(port_free(p) for p in ports):
            return base
    raise HarnessError("no free port block")


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
