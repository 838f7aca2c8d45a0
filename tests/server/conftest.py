"""The real-server tier: temporal-server built from the Go module, on SQLite and on PostgreSQL
with TLS required. A missing binary or a server that does not come up is an error, never a skip."""

from __future__ import annotations

import pytest

from tests.harness import LocalCluster

EXTRA_ROLES = {
    # For the authorization matrix: one namespace only, and read-only.
    "scoped": {"permissions": ["default:write"], "token_lifetime": "1h"},
    "reader": {"permissions": ["default:read"], "token_lifetime": "1h"},
    # For the codec server: may see plaintext of namespace default only.
    "nsadmin": {"permissions": ["default:admin"], "token_lifetime": "1h"},
}


def _cluster(tmp_path_factory, driver: str):
    cluster = LocalCluster(tmp_path_factory.mktemp(f"cluster-{driver}"), driver=driver, extra_roles=EXTRA_ROLES)
    return cluster.start_registered()


@pytest.fixture(scope="session")
def sqlite_cluster(tmp_path_factory):
    cluster = _cluster(tmp_path_factory, "sqlite")
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def pg_cluster(tmp_path_factory):
    cluster = _cluster(tmp_path_factory, "postgres")
    yield cluster
    cluster.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def cluster(request):
    return request.getfixturevalue(f"{'pg' if request.param == 'postgres' else 'sqlite'}_cluster")
