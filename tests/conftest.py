import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        path = str(item.fspath)
        if "/tests/server/" in path:
            item.add_marker(pytest.mark.server)
        elif "/tests/docker/" in path:
            item.add_marker(pytest.mark.docker)
