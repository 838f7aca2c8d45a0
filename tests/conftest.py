import pytest

# Cheap tiers first, so a broken core fails within a minute instead of after the compose stack.
TIER_ORDER = ("unit", "codec", "export", "rotation", "server", "docker")


def _tier(item) -> int:
    path = str(item.fspath)
    for rank, tier in enumerate(TIER_ORDER):
        if f"/tests/{tier}/" in path:
            return rank
    return len(TIER_ORDER)


def pytest_collection_modifyitems(items):
    for item in items:
        path = str(item.fspath)
        if "/tests/server/" in path:
            item.add_marker(pytest.mark.server)
        elif "/tests/docker/" in path:
            item.add_marker(pytest.mark.docker)
    items.sort(key=_tier)  # stable: the order inside a tier (and a module) is kept
