"""A Kubernetes worker on workload identity reaches the key service with its exchanged token, on
the real server: it holds what its pod mounts (the role Secret's CA, client certificate and key,
and the projected service-account token), no Temporal token, no ring and no KEK; it gets its own
namespace's ring and runs a workflow whose history the server stores encrypted; another
namespace's ring is refused (403); a pod whose subject token the exchange refuses fails with one
line.

The token exchange (`serve-exchange`) trusts the service-account issuer stand-in of
tests/support/kube_issuer.py (see tests/server/test_workload_identity.py); the codec server with
its key service runs in-process with the bundle's certificate and JWKS file (which publishes the
exchange's key)."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from datetime import timedelta

import pytest
from temporalio.worker import Worker

from bootstrap.client import WorkloadIdentity, connect_workload
from bootstrap.core.codec import ENCODING, data_converter, decrypt
from bootstrap.key_client import KeyServiceError, KeyServiceKeys
from tests.support.codec import bundle_keys, in_process_codec_server
from tests.support.workflows import GreetingWorkflow, greet
from tests.support.workload import exchange_url, project, workload_cluster


@pytest.fixture(scope="module")
def wi(tmp_path_factory):
    yield from workload_cluster(tmp_path_factory.mktemp("workload-keys"))


@pytest.fixture(scope="module")
def codec_url(wi):
    with in_process_codec_server(wi) as url:
        yield url


def pod_mounts(wi, tmp_path):
    """What the exported example worker pod mounts from its role Secret (items ca.pem, worker.pem,
    worker.key at trust/ca.pem, clients/worker.pem, clients/worker.key): nothing else."""
    pod = tmp_path / "bundle"
    (pod / "trust").mkdir(parents=True), (pod / "clients").mkdir()
    shutil.copy(wi.bundle / "trust/ca.pem", pod / "trust/ca.pem")
    for name in ("worker.pem", "worker.key"):
        shutil.copy(wi.bundle / "clients" / name, pod / "clients" / name)
    return pod


def test_a_workload_identity_worker_fetches_its_ring_with_its_exchanged_token(wi, codec_url, tmp_path):
    pod = pod_mounts(wi, tmp_path)
    token_file = project(wi, tmp_path, namespace="default", account="orders-worker")
    identity = WorkloadIdentity(exchange_url(wi), token_file=token_file, ca_file=pod / "trust/ca.pem")
    keys = KeyServiceKeys.for_workload(f"{codec_url}/v1/keys", bundle_dir=pod, identity=identity)
    assert keys.ring("default") == bundle_keys(wi.bundle).rings["default"]
    with pytest.raises(KeyServiceError, match=r"refused the data keys of namespace 'other' \(403"):
        keys.ring("other")
    assert keys.exchanges == 1, "the exchanged token is kept until half its lifetime"
    held = {p.read_bytes() for p in pod.rglob("*") if p.is_file()}
    codec_material = {p.read_bytes() for d in ("codec-keys", "codec-kek") for p in (wi.bundle / d).iterdir()}
    assert not held & codec_material and not any(b"namespace-ring" in data for data in held)

    async def scenario():
        client, refresher = await connect_workload(
            wi.address, exchange_url=exchange_url(wi), bundle_dir=pod, token_file=token_file, namespace="default",
            server_name="localhost", data_converter=data_converter(keys, namespace="default"))
        queue = f"wi-keys-{uuid.uuid4().hex[:8]}"
        async with Worker(client, task_queue=queue, workflows=[GreetingWorkflow], activities=[greet]):
            for attempt in range(40):  # a just-registered namespace reaches the frontend cache within ~10s
                try:
                    handle = await client.start_workflow(GreetingWorkflow.run, "card 4111", id=f"wi-keys-{uuid.uuid4()}",
                                                         task_queue=queue, execution_timeout=timedelta(seconds=30))
                    break
                except Exception:
                    if attempt == 39:
                        raise
                    await asyncio.sleep(0.5)
            result = await asyncio.wait_for(handle.result(), 60)
        history = await client.get_workflow_handle(handle.id).fetch_history()
        started = history.events[0].workflow_execution_started_event_attributes.input.payloads
        return result, list(started)

    result, stored = asyncio.run(scenario())
    assert result == "hello, card 4111"
    [payload] = stored
    assert payload.metadata["encoding"] == ENCODING and b"4111" not in payload.data
    assert b"4111" in decrypt(payload, bundle_keys(wi.bundle)).data


def test_a_pod_whose_subject_token_the_exchange_refuses_fails_with_one_line(wi, codec_url, tmp_path):
    pod = pod_mounts(wi, tmp_path)
    token_file = project(wi, tmp_path, namespace="kube-system", account="default")  # bound to nothing
    identity = WorkloadIdentity(exchange_url(wi), token_file=token_file, ca_file=pod / "trust/ca.pem")
    keys = KeyServiceKeys.for_workload(f"{codec_url}/v1/keys", bundle_dir=pod, identity=identity)
    with pytest.raises(KeyServiceError) as caught:
        data_converter(keys, namespace="default")
    message = str(caught.value)
    assert "\n" not in message and "token exchange refused" in message, message
