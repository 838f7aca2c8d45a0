"""The kube tier: a real kube-apiserver on etcd (tests/support/kube_cluster.py), built from the Go
module proxy, and for the modules that run pods a node (tests/support/kube_node.py: kubelet,
containerd, scheduler, controller manager). A missing build, an API server that does not come up or
a node that never gets Ready is an error, never a skip."""

from __future__ import annotations

import pytest

from tests.support.bundles import make_bundle
from tests.support.codec import in_process_codec_server
from tests.support.compose_stack import build_standin_images
from tests.support.exports import CONFIG, WORKLOAD_IDENTITY, export
from tests.support.kube_cluster import SERVICE_ACCOUNT_ISSUER, ApiServerIssuer, KubeCluster
from tests.support.kube_node import KubeNode
from tests.support.kube_rotation import start_rotation_pod
from tests.support.workload import workload_cluster

ROTATION_MODULE = "test_kube_token_rotation.py"
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
    says: `kubectl apply -f DEST/namespace.yaml`, then `kubectl apply -f DEST/secrets -f DEST/manifests`."""
    bundle = make_bundle(tmp_path_factory.mktemp("kube-bundle"), config)
    dest = tmp_path_factory.mktemp("kube-export") / "out"
    result = export(bundle, dest)
    assert result.code == 0, result.err
    namespace = bundle.config.kubernetes.namespace
    kube.kubectl("apply", "-f", str(dest / "namespace.yaml"))
    applied = kube.kubectl("apply", "-f", str(dest / "secrets"), "-f", str(dest / "manifests"), check=False)
    return bundle, dest, namespace, applied


@pytest.fixture(scope="session")
def installed(kube, tmp_path_factory):
    return _install(kube, tmp_path_factory, CONFIG)


@pytest.fixture(scope="session")
def installed_wi(kube, tmp_path_factory):
    return _install(kube, tmp_path_factory, WI_CONFIG)


@pytest.fixture(scope="session")
def kube_wi(kube, installed_wi, tmp_path_factory):
    """The exchange runs here with the token of the exported exchange's service account, so the
    API server grants it exactly what the export's RBAC says (TokenReview through
    system:auth-delegator); its policy is a server-tier cluster's."""
    workdir = tmp_path_factory.mktemp("kube-wi")
    for namespace in ("orders-team", "elsewhere"):
        kube.kubectl("create", "namespace", namespace)
    bundle, _, namespace, _ = installed_wi
    account = f"{bundle.config.kubernetes.release}-token-exchange"
    token_file = workdir / "exchange-sa.token"
    token_file.write_text(kube.create_token(namespace, account, SERVICE_ACCOUNT_ISSUER, duration="2h"))
    issuer = ApiServerIssuer(SERVICE_ACCOUNT_ISSUER, f"{kube.server}/.well-known/openid-configuration",
                             kube.ca_file, token_file)
    # Temporal namespace `orders-team`: default_bindings grants `orders-team:write` to pods of the
    # Kubernetes namespace of the same name; `payments-team` is the namespace its workers must not
    # get keys of.
    yield from workload_cluster(workdir, issuer=issuer, namespaces=("orders-team", "payments-team"))


@pytest.fixture(scope="session")
def kube_key_service(kube_wi):
    """The codec server with its key service for kube_wi's bundle (its certificate, rings, KEKs and
    JWKS, which publishes the exchange's key): the URL a worker pod fetches rings from."""
    with in_process_codec_server(kube_wi) as url:
        yield f"{url}/v1/keys"


@pytest.fixture(scope="session")
def kube_node(kube, tmp_path_factory):
    """The tier's one node (a node owns its bridge and its iptables chains): it runs pods of the
    bundle image and of Temporal's server, admin-tools and Web UI, PostgreSQL and Dex (the local Docker
    engine's stand-ins, imported into the node's containerd), and is stopped with every container
    it ran when the tier ends. Each module works in Kubernetes namespaces of its own."""
    images = build_standin_images()
    wanted = ("BUNDLE_IMAGE", "TEMPORAL_SERVER_IMAGE", "TEMPORAL_ADMINTOOLS_IMAGE", "POSTGRES_IMAGE", "DEX_IMAGE",
              "TEMPORAL_UI_IMAGE")
    node = KubeNode(kube, tmp_path_factory.mktemp("kube-node"), images=tuple(images[v] for v in wanted))
    node.bundle_image = images["BUNDLE_IMAGE"]
    node.image = images
    try:
        node.start()
    except BaseException:
        node.stop()
        raise
    yield node
    node.stop()


@pytest.fixture(scope="session", autouse=True)
def rotation_pod(request):
    """The kubelet-rotation pod (tests/support/kube_rotation.py) starts with the tier, so its 11
    minutes of waiting for the kubelet run beside the other kube modules on the same node; its
    test reads the outcome. None when test_kube_token_rotation.py is not collected."""
    if not any(item.path.name == ROTATION_MODULE for item in request.session.items):
        return None
    fixture = request.getfixturevalue
    return start_rotation_pod(fixture("kube"), fixture("kube_node"), fixture("kube_wi"), fixture("installed_wi"),
                              fixture("kube_key_service"))
