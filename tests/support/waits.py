"""Polling until something holds, and the error the support modules raise when it never does."""

from __future__ import annotations

import time


class HarnessError(RuntimeError):
    pass


def wait_until(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - reported below if it never succeeds
            last = exc
        time.sleep(interval)
    raise HarnessError(f"timed out after {timeout}s waiting for {what}: {last!r}")

