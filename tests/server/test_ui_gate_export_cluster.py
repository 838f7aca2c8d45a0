"""The UI gate as export-helm ships it, against the real server on PostgreSQL: the gate runs from
nothing but what its Deployment mounts, the registration Job from what its Job mounts, and the
cluster info travels from one to the other through the ConfigMap (a stand-in API server records
the Job's patch; the test then writes the ConfigMap's file as the kubelet would). A namespace
reader, connecting as the Web UI does (its Secret's certificate, its TLS server name), gets the
cluster info and their namespace only once the Job has recorded it."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from datetime import timedelta

import pytest
import yaml
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest, GetClusterInfoRequest, ListNamespacesRequest
from temporalio.client import Client
from temporalio.service import RPCStatusCode, TLSConfig

from tests.support.bundles import run_main
from tests.support.exports import env_of, export_cluster, manifest, materialize, secrets_of, web_mounts
from tests.support.kube_api import stand_in_api_server
from tests.support.paths import REPO
from tests.support.ports import free_port
from tests.support.ui_gate import call_status
from tests.support.waits import wait_until

pytestmark = [pytest.mark.server, pytest.mark.timeout(600)]


def _replace_value(args: list[str], option: str, value: str) -> list[str]:
    at = args.index(option) + 1
    return [*args[:at], value, *args[at + 1:]]


@pytest.fixture(scope="module")
def exported(pg_cluster, tmp_path_factory):
    return export_cluster(pg_cluster, tmp_path_factory.mktemp("k8s-export") / "out")


def _web_client(cluster, dest, address: str, token: str):
    values = yaml.safe_load((dest / "values.yaml").read_text())
    env = env_of(values)
    mounted = web_mounts(values)[env["TEMPORAL_TLS_CERT"].rsplit("/", 1)[0]]
    web = secrets_of(dest)[mounted["secret"]["secretName"]]
    return Client.connect(address, namespace="default", api_key=token, connect_timeout=timedelta(seconds=10),
                          tls=TLSConfig(server_root_ca_cert=web["ca.crt"], client_cert=web["tls.crt"],
                                        client_private_key=web["tls.key"], domain=env["TEMPORAL_TLS_SERVER_NAME"]))


def _start_gate(cluster, dest, root):
    """The gate from its Deployment: its mounts under root, its args with the in-cluster addresses
    swapped for this machine's (the frontend, our JWKS server, a free port)."""
    deployment = manifest(dest, "manifests/ui-gate.yaml", "Deployment")
    args, env = materialize(dest, deployment, root)
    port = free_port()
    args = _replace_value(args, "--port", str(port))
    args = _replace_value(args, "--upstream", cluster.address)
    args = _replace_value(args, "--jwks-url", f"https://localhost:{cluster.jwks_port}/jwks.json")
    info_path = root / args[args.index("--cluster-info") + 1].lstrip("/")
    args = _replace_value(args, "--cluster-info", str(info_path))
    log = (root / "ui-gate.log").open("ab")
    process = subprocess.Popen([sys.executable, "-m", "bootstrap", *args, "--host", "127.0.0.1"], cwd=REPO,
                               env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)

    def listening() -> bool:
        assert process.poll() is None, (root / "ui-gate.log").read_text()[-2000:]
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_until(listening, 30, "the exported UI gate")
    return process, f"127.0.0.1:{port}", info_path


def _run_job(cluster, dest, root, monkeypatch) -> list:
    """register-namespaces with the Job's args and mounts alone (its Secret, the bundle.yaml
    ConfigMap); returns the API calls it made."""
    args, env = materialize(dest, manifest(dest, "manifests/register-namespaces-job.yaml", "Job"), root)
    assert args[args.index("--address") + 1] == f"temporal-frontend:{cluster.base}"  # the chart's Service
    args = _replace_value(args, "--address", cluster.address)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    jwks_pair = (cluster.bundle / "jwks/server.pem", cluster.bundle / "jwks/server.key")
    with stand_in_api_server(jwks_pair, cluster.bundle / "trust/ca.pem", root / "sa", "temporal", monkeypatch) as calls:
        result = run_main(*args)
    assert result.code == 0, result.err
    assert "namespace default:" in result.out and "namespace other:" in result.out
    return calls


def test_the_exported_gate_serves_a_namespace_reader_once_the_job_recorded_the_cluster_info(
        pg_cluster, exported, tmp_path, monkeypatch):
    cluster = pg_cluster
    process, gate, info_path = _start_gate(cluster, exported, tmp_path / "gate")
    try:
        reader = cluster.token("reader")

        async def before():
            client = await _web_client(cluster, exported, gate, reader)
            # Nothing recorded yet: the frontend's own refusal, nothing invented.
            assert await call_status(client.workflow_service.get_cluster_info(GetClusterInfoRequest())) == RPCStatusCode.PERMISSION_DENIED

        asyncio.run(before())

        [(path, _, body)] = _run_job(cluster, exported, tmp_path / "job", monkeypatch)
        assert path == "/api/v1/namespaces/temporal/configmaps/temporal-bundle-cluster-info"
        info_path.write_text(body["data"]["cluster.json"])  # what the kubelet does with the ConfigMap

        async def after():
            client = await _web_client(cluster, exported, gate, reader)
            info = await client.workflow_service.get_cluster_info(GetClusterInfoRequest())
            listed = await client.workflow_service.list_namespaces(ListNamespacesRequest(page_size=100))
            system = await Client.connect(cluster.address, namespace="default", api_key=cluster.token("system"),
                                          tls=TLSConfig(server_root_ca_cert=(cluster.bundle / "trust/ca.pem").read_bytes(),
                                                        client_cert=(cluster.bundle / "clients/system.pem").read_bytes(),
                                                        client_private_key=(cluster.bundle / "clients/system.key").read_bytes(),
                                                        domain="localhost"))
            truth = await system.workflow_service.get_cluster_info(GetClusterInfoRequest())
            assert (info.cluster_id, info.server_version) == (truth.cluster_id, truth.server_version)
            assert [n.namespace_info.name for n in listed.namespaces] == ["default"]
            # Nothing beyond the token: a namespace it does not name stays refused by the frontend.
            other = DescribeNamespaceRequest(namespace="other")
            assert await call_status(client.workflow_service.describe_namespace(other)) == RPCStatusCode.PERMISSION_DENIED

        asyncio.run(after())
    finally:
        process.terminate()
        process.wait(10)
