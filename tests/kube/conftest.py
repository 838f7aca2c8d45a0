"""The kube tier: a real kube-apiserver on etcd (tests/support/kube_cluster.py), built from the Go
module proxy. A missing build or an API server that does not come up is an error, never a skip."""

from __future__ import annotations

import pytest

from tests.support.bundles import make_bundle
from tests.support.exports import CONFIG, export
from tests.support.kube_cluster import KubeCluster


@pytest.fixture(scope="session")
def kube(tmp_path_factory):
    cluster = KubeCluster(tmp_path_factory.mktemp("kube")).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def kube_bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("kube-bundle"), CONFIG)


@pytest.fixture(scope="session")
def installed(kube, kube_bundle, tmp_path_factory):
    """The export of kube_bundle applied to the real API server as docs/kubernetes.md says:
    the namespace, then `kubectl apply -f DEST/secrets -f DEST/manifests`."""
    dest = tmp_path_factory.mktemp("kube-export") / "out"
    result = export(kube_bundle, dest)
    assert result.code == 0, result.err
    namespace = kube_bundle.config.kubernetes.namespace
    kube.kubectl("create", "namespace", namespace)
    applied = kube.kubectl("apply", "-f", str(dest / "secrets"), "-f", str(dest / "manifests"), check=False)
    return dest, namespace, applied
