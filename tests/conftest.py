import pytest

# Cheap tiers first, so a broken core fails within a minute instead of after the compose stack.
TIER_ORDER = ("unit", "codec", "export", "rotation", "server", "docker")
# Under pytest-xdist (scripts/run-tests.sh runs workers side by side) the longest pole goes first:
# the docker tier, mostly waiting on containers, runs on one worker while the others take the rest.
PARALLEL_ORDER = ("docker", "server", "rotation", "hsm", "export", "codec", "unit")


def _rank(item, order) -> int:
    path = str(item.fspath)
    for rank, tier in enumerate(order):
        if f"/tests/{tier}/" in path:
            return rank
    return len(order)


def _xdist_group(path: str) -> str | None:
    """Tests that share a session fixture run on one worker: the docker tier shares one compose
    stack; a server-tier module shares the session clusters (a worker starts its own)."""
    if "/tests/docker/" in path:
        return "docker"
    if "/tests/server/" in path:
        return "server:" + path.rsplit("/", 1)[1]
    return None


def pytest_collection_modifyitems(config, items):
    parallel = config.getoption("dist", "no") != "no"
    for item in items:
        path = str(item.fspath)
        if "/tests/server/" in path:
            item.add_marker(pytest.mark.server)
        elif "/tests/docker/" in path:
            item.add_marker(pytest.mark.docker)
        group = _xdist_group(path)
        if parallel and group:
            item.add_marker(pytest.mark.xdist_group(group))
    order = PARALLEL_ORDER if parallel else TIER_ORDER
    items.sort(key=lambda item: _rank(item, order))  # stable: the order inside a tier (and a module) is kept
