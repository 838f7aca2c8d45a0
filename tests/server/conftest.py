"""The real-server tier: temporal-server built from the Go module, on SQLite and on PostgreSQL
with TLS required. A missing binary or a server that does not come up is an error, never a skip."""

from __future__ import annotations

import pytest

from tests.support.cluster import LocalCluster
from tests.support.hsm import softhsm_token

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


@pytest.fixture(scope="session")
def pkcs11_cluster(tmp_path_factory):
    """A cluster whose CAs and JWT signing keys never left a SoftHSM2 token; it refetches
    the JWKS every 2 s, for the rotation test. `hsm_env` is what a process needs to reach the token."""
    env, keys = softhsm_token(tmp_path_factory.mktemp("softhsm"), "cluster")
    with pytest.MonkeyPatch.context() as patch:  # `init` runs as a CLI subprocess and signs in the token
        for name, value in env.items():
            patch.setenv(name, value)
        cluster = LocalCluster(tmp_path_factory.mktemp("cluster-pkcs11"), extra_roles=EXTRA_ROLES, keys=keys,
                               jwks_refresh="2s").start_registered()
    cluster.hsm_env = env
    yield cluster
    cluster.stop()


@pytest.fixture
def on_token(pkcs11_cluster, monkeypatch):
    """The pkcs11 cluster, with this process (and the CLI subprocesses it starts) using its token:
    key files there are references, which resolve to keys that sign inside the token."""
    from bootstrap.core import backend, hsm
    from bootstrap.core.config import load_config

    for name, value in pkcs11_cluster.hsm_env.items():
        monkeypatch.setenv(name, value)
    backend.activate(load_config(pkcs11_cluster.config_path))
    yield pkcs11_cluster
    hsm.activate(None)
