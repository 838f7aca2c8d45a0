"""The kube tier: a real kube-apiserver on etcd (tests/support/kube_cluster.py), built from the Go
module proxy. A missing build or an API server that does not come up is an error, never a skip."""

from __future__ import annotations

import pytest

from tests.support.bundles import make_bundle
from tests.support.exports import CONFIG, WORKLOAD_IDENTITY, export
from tests.support.kube_cluster import KubeCluster

# The export tier's config with workload identity on, in a Kubernetes namespace of its own (it
# exports no token refresher).
WI_CONFIG = CONFIG.replace("namespace: temporal-prod", "namespace: temporal-wi") + WORKLOAD_IDENTITY


@pytest.fixture(scope="session")
def kube(tmp_path_factory):
    cluster = KubeCluster(tmp_path_factory.mktemp("kube")).start()
    yield cluster
    cluster.stop()


def _install(kube, tmp_path_factory, config: str):
    """A bundle of that config, exported and applied to the real API server as docs/kubernetes.md
    says: the namespace, then `kubectl apply -f DEST/secrets -f DEST/manifests`."""
    bundle = make_bundle(tmp_path_factory.mktemp("kube-bundle"), config)
    dest = tmp_path_factory.mktemp("kube-export") / "out"
    result = export(bundle, dest)
    assert result.code == 0, result.err
    namespace = bundle.config.kubernetes.namespace
    kube.kubectl("create", "namespace", namespace)
    applied = kube.kubectl("apply", "-f", str(dest / "secrets"), "-f", str(dest / "manifests"), check=False)
    return bundle, dest, namespace, applied


@pytest.fixture(scope="session")
def installed(kube, tmp_path_factory):
    return _install(kube, tmp_path_factory, CONFIG)


@pytest.fixture(scope="session")
def installed_wi(kube, tmp_path_factory):
    return _install(kube, tmp_path_factory, WI_CONFIG)
