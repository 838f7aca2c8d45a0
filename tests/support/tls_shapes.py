"""Weakened shapes of a server config's global.tls, each a way the server would fail open (a
plaintext listener, a listener that admits any client, a client that trusts any CA). Shared by the
guard's tests for render-config (compose) and export-helm (the chart)."""

from __future__ import annotations

import copy

from hypothesis import strategies as st

MUTUAL = ("frontend", "internode")
# Paths inside global.tls; () is global.tls itself.
TARGETS = (
    (),
    *((group,) for group in MUTUAL),
    *((group, "server") for group in MUTUAL),
    *((group, "client") for group in MUTUAL),
    *((group, "server", key) for group in MUTUAL for key in ("certFile", "keyFile", "requireClientAuth", "clientCaFiles")),
    *((group, "client", "rootCaFiles") for group in MUTUAL),
    ("systemWorker", "certFile"), ("systemWorker", "keyFile"), ("systemWorker", "client", "rootCaFiles"),
)
# drop: the key is gone; empty: it is there but says nothing ("", [], {}, false).
WEAKENINGS = tuple((target, how) for target in TARGETS for how in ("drop", "empty"))


def weakenings(max_size: int = 3):
    """Non-empty sets of weakenings: every one of them alone must be refused."""
    return st.sets(st.sampled_from(WEAKENINGS), min_size=1, max_size=max_size)


def weakened(tls: dict, choices) -> dict | None:
    """A copy of tls with each weakening applied (None: global.tls dropped)."""
    result = copy.deepcopy(tls)
    for target, how in sorted(choices):
        if not target:
            result = None if how == "drop" else {}
            continue
        parent = result
        for key in target[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if isinstance(parent, dict) and target[-1] in parent:
            if how == "drop":
                del parent[target[-1]]
            else:
                parent[target[-1]] = _empty_like(parent[target[-1]])
    return result


def _empty_like(value):
    if isinstance(value, bool):
        return False
    return type(value)() if isinstance(value, (str, list, dict)) else None
