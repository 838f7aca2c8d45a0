"""Workload identity against the real Temporal server: a LocalCluster whose token exchange
(`serve-exchange`) trusts one service-account issuer (the stand-in of tests/support/kube_issuer.py,
or a real kube-apiserver of tests/support/kube_cluster.py), and the client-side steps the tests
share: the exchange's form, a raw client with a given token, a greeting workflow."""

from __future__ import annotations

import json
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from datetime import timedelta
from pathlib import Path

from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from bootstrap.client import RoleCredentials
from bootstrap.core.workload_identity import GRANT_TYPE, JWT_TOKEN_TYPE
from tests.support.cluster import LocalCluster
from tests.support.kube_issuer import AUDIENCE, KubeIssuer
from tests.support.ports import free_port
from tests.support.waits import wait_until
from tests.support.workflows import GreetingWorkflow, retry_while


class WorkloadCluster(LocalCluster):
    """The harness's cluster with workload_identity pointing at the stand-in issuer."""

    issuer: KubeIssuer | None = None
    exchange_port: int = 0
    exchange_lifetime: str = "5m"

    def bundle_config(self) -> dict:
        doc = super().bundle_config()
        doc["workload_identity"] = {
            "port": self.exchange_port,
            "token_lifetime": self.exchange_lifetime,
            "issuers": [issuer_entry(self.issuer)],
        }
        return doc

    def start_exchange(self, log: Path) -> None:
        argv = [sys.executable, "-m", "bootstrap", "serve-exchange", "--config", str(self.config_path),
                "--out", str(self.bundle), "--host", "127.0.0.1"]
        self.exchange_log = log
        self._spawn(argv, log, None)
        ctx = ssl.create_default_context(cafile=str(self.bundle / "trust" / "ca.pem"))
        health = f"https://localhost:{self.exchange_port}/healthz"
        wait_until(lambda: urllib.request.urlopen(health, context=ctx, timeout=2).status == 200, 30, "token exchange")


def issuer_entry(issuer) -> dict:
    """workload_identity.issuers[0] for a service-account issuer: the stand-in, or a real API
    server whose discovery is reached at another address than its issuer URL."""
    entry = {"name": "cluster", "issuer": issuer.issuer, "audience": getattr(issuer, "audience", AUDIENCE),
             "ca_file": str(issuer.ca_file), "auth_token_file": str(issuer.token_file)}
    if getattr(issuer, "discovery_url", None):
        entry["discovery_url"] = issuer.discovery_url
    return entry


def workload_cluster(workdir: Path, exchange_lifetime: str = "5m", issuer=None, **kwargs):
    """The issuer (the stand-in unless given), the cluster and `serve-exchange`, stopped after the
    yield (a given issuer is the caller's to stop)."""
    own_issuer = issuer is None
    issuer = issuer or KubeIssuer(workdir / "issuer", free_port()).start()
    cluster = WorkloadCluster(workdir / "cluster", **kwargs)
    cluster.issuer, cluster.exchange_port, cluster.exchange_lifetime = issuer, free_port(), exchange_lifetime
    try:
        cluster.start_registered()
        cluster.start_exchange(workdir / "exchange.log")
        yield cluster
    finally:
        cluster.stop()
        if own_issuer:
            issuer.stop()


def exchange_url(cluster) -> str:
    return f"https://localhost:{cluster.exchange_port}/token"


def post_exchange(cluster, subject: str, **extra) -> tuple[int, dict]:
    form = {"grant_type": GRANT_TYPE, "subject_token": subject, "subject_token_type": JWT_TOKEN_TYPE, **extra}
    request = urllib.request.Request(exchange_url(cluster), data=urllib.parse.urlencode(form).encode(),
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    ctx = ssl.create_default_context(cafile=str(cluster.bundle / "trust" / "ca.pem"))
    try:
        with urllib.request.urlopen(request, context=ctx, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def project(cluster, tmp_path, **kwargs) -> Path:
    path = tmp_path / "token"
    cluster.issuer.project(path, cluster.issuer.service_account_token(**kwargs))
    return path


async def raw_client(cluster, token: str, namespace: str = "default") -> Client:
    creds = RoleCredentials.load(cluster.bundle, "worker", with_token=False)
    return await Client.connect(cluster.address, namespace=namespace, tls=creds.tls_config("localhost"), api_key=token)


async def describe(client: Client, namespace: str) -> None:
    await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace=namespace))


async def start_greeting(client: Client, queue: str) -> str:
    # A just-registered namespace reaches the frontend cache within ~10 s.
    return await retry_while(
        lambda: client.execute_workflow(GreetingWorkflow.run, "pod", id=f"wi-{uuid.uuid4()}", task_queue=queue,
                                        execution_timeout=timedelta(seconds=30)),
        lambda exc: isinstance(exc, RPCError) and exc.status == RPCStatusCode.NOT_FOUND, 40, 0.5)


def denied(exc: BaseException) -> bool:
    if isinstance(exc, RPCError):
        return exc.status in (RPCStatusCode.PERMISSION_DENIED, RPCStatusCode.UNAUTHENTICATED)
    return "PermissionDenied" in str(exc) or "Request unauthorized" in str(exc) or "unauthorized" in str(exc).lower()
