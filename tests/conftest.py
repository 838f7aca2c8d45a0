import pytest
from hypothesis import HealthCheck, settings

# Fuzzing: a fixed budget per parser (each test says its max_examples), derandomized so CI runs
# the same examples every time, no example database written into the checkout, no time deadline
# (2 shared cores make per-example timing meaningless).
settings.register_profile("bundle", database=None, derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("bundle")

# Cheap tiers first, so a broken core fails within a minute instead of after the compose stack.
TIER_ORDER = ("unit", "codec", "export", "hsm", "rotation", "server", "kube", "docker")


def _tier(item) -> int:
    path = str(item.fspath)
    for rank, tier in enumerate(TIER_ORDER):
        if f"/tests/{tier}/" in path:
            return rank
    return len(TIER_ORDER)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Each phase's report kept on the test (`item.rep_call`), for fixtures that print what a
    failed test saw (a browser's page, its API calls)."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def pytest_collection_modifyitems(items):
    for item in items:
        path = str(item.fspath)
        if "/tests/server/" in path:
            item.add_marker(pytest.mark.server)
        elif "/tests/docker/" in path:
            item.add_marker(pytest.mark.docker)
        elif "/tests/kube/" in path:
            item.add_marker(pytest.mark.kube)
    items.sort(key=_tier)  # stable: the order inside a tier (and a module) is kept
