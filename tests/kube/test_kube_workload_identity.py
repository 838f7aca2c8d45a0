"""Workload identity with tokens a real kube-apiserver issues (TokenRequest, bound to a pod object,
signed by its service-account key), traded at the bundle's token exchange (`serve-exchange`, which
reads the API server's own OIDC discovery and JWKS) and used at the real Temporal server."""

from __future__ import annotations

import asyncio
import time
import uuid

import jwt
from temporalio.worker import Worker

from bootstrap.client import connect_workload
from tests.support.kube_cluster import EXCHANGE_AUDIENCE as AUDIENCE, SERVICE_ACCOUNT_ISSUER
from tests.support.waits import wait_until
from tests.support.workflows import GreetingWorkflow, greet
from tests.support.workload import exchange_url, post_exchange, start_greeting


def _pod(kube, namespace: str, account: str) -> str:
    """A pod object of that service account (admitted, never run: there is no kubelet)."""
    name = f"worker-{uuid.uuid4().hex[:6]}"
    kube.kubectl("create", "serviceaccount", account, "-n", namespace, check=False)
    kube.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
                "spec": {"serviceAccountName": account, "automountServiceAccountToken": False,
                         "containers": [{"name": "worker", "image": "temporal-bundle-worker:test"}]}})
    return name


def test_a_pod_bound_token_from_the_api_server_runs_a_workflow_in_its_namespace(kube, kube_wi, tmp_path):
    pod = _pod(kube, "orders-team", "orders-worker")
    token = kube.create_token("orders-team", "orders-worker", AUDIENCE, pod=pod)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["iss"] == SERVICE_ACCOUNT_ISSUER and claims["kubernetes.io"]["pod"]["name"] == pod
    token_file = tmp_path / "token"
    token_file.write_text(token)

    async def scenario():
        client, _ = await connect_workload(kube_wi.address, exchange_url=exchange_url(kube_wi), bundle_dir=kube_wi.bundle,
                                           token_file=token_file, namespace="orders-team", server_name="localhost")
        queue = f"kube-{uuid.uuid4().hex[:8]}"
        async with Worker(client, task_queue=queue, workflows=[GreetingWorkflow], activities=[greet]):
            return await start_greeting(client, queue), jwt.decode(client.api_key, options={"verify_signature": False})

    result, exchanged = asyncio.run(scenario())
    assert result == "hello, pod"
    assert exchanged["groups"] == ["orders-team:write"]
    assert exchanged["sub"] == "cluster:system:serviceaccount:orders-team:orders-worker"


def test_tokens_the_api_server_issues_outside_the_binding_are_refused(kube, kube_wi):
    refused = {
        "another namespace's pod": kube.create_token("elsewhere", "orders-worker", AUDIENCE,
                                                     pod=_pod(kube, "elsewhere", "orders-worker")),
        "not bound to a pod": kube.create_token("orders-team", "orders-worker", AUDIENCE),
        "the API server's audience": kube.create_token("orders-team", "orders-worker", SERVICE_ACCOUNT_ISSUER,
                                                       pod=_pod(kube, "orders-team", "orders-worker")),
    }
    for case, token in refused.items():
        status, doc = post_exchange(kube_wi, token)
        assert (status, doc.get("error")) == (400, "invalid_request"), (case, doc)
        assert "access_token" not in doc, case


def test_a_deleted_pods_token_is_refused_at_the_next_exchange(kube, kube_wi):
    """The token is still signed and unexpired; the API server's TokenReview says its pod is gone."""
    pod = _pod(kube, "orders-team", "orders-worker")
    token = kube.create_token("orders-team", "orders-worker", AUDIENCE, pod=pod)
    assert post_exchange(kube_wi, token)[0] == 200
    kube.kubectl("delete", "pod", pod, "-n", "orders-team")
    deleted = time.monotonic()
    # kube-apiserver v1.37.2 keeps a successful token authentication for 10 s (TokenSuccessCacheTTL).
    status, doc = wait_until(lambda: _refused(post_exchange(kube_wi, token)), 30, "the exchange to refuse the token")
    assert (status, doc.get("error")) == (400, "invalid_request"), doc
    assert "no longer accepts" in doc["error_description"]
    assert time.monotonic() - deleted <= 15


def _refused(answer: tuple[int, dict]):
    return answer if answer[0] != 200 else None
