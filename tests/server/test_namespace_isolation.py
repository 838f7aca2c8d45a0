"""A worker of `orders`, given exactly what `make export ROLE=...` gives it, against the real
server: the `payments` history it may get hold of is ciphertext only, for every payload
kind (input, memo, signal, activity input and result, workflow result, failure), and the key
service gives its token no `payments` ring. The bundle is as init makes it (one ring and one KEK
per namespace), the codec server (with its key service) runs in-process with the bundle's certificate."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.client import Client, WorkflowFailureError
from temporalio.service import TLSConfig
from temporalio.worker import Worker

from bootstrap.core.codec import ENCODING, NAMESPACE_HEADER, CodecError, data_converter, decrypt
from bootstrap.key_client import KeyServiceError, KeyServiceKeys
from tests.support.codec import in_process_codec_server
from tests.support.binaries import run_cli
from tests.support.cluster import LocalCluster
from tests.support.isolation_workflows import EveryPayloadWorkflow, echo

SECRET = "card 4111-1111-1111-1111"
ROLES = {"orders-worker": {"permissions": ["orders:write"], "token_lifetime": "1h"},
         "payments-worker": {"permissions": ["payments:write"], "token_lifetime": "1h"}}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster-isolation"), namespaces=("orders", "payments"),
                           extra_roles=ROLES).start_registered()
    manifest = json.loads((cluster.bundle / "codec-keys/keys.json").read_text())
    assert manifest["format"] == "per-namespace-v1", "init gives a new bundle per-namespace custody"
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def codec_url(cluster):
    with in_process_codec_server(cluster) as url:
        yield url


def export(cluster: LocalCluster, role: str, codec_url: str, dest: Path) -> Path:
    run_cli("export-role", "--config", str(cluster.config_path), "--out", str(cluster.bundle), "--role", role,
            "--dest", str(dest), "-q")
    doc = json.loads((dest / "key-service.json").read_text())
    doc["url"] = f"{codec_url}/v1/keys"  # the in-process codec server's port instead of codec-server:8888
    (dest / "key-service.json").write_text(json.dumps(doc))
    return dest


async def connect_exported(cluster: LocalCluster, dest: Path, role: str, namespace: str, converter=None) -> Client:
    tls = TLSConfig(server_root_ca_cert=(dest / "ca.pem").read_bytes(), client_cert=(dest / f"{role}.pem").read_bytes(),
                    client_private_key=(dest / f"{role}.key").read_bytes(), domain="localhost")
    kwargs = {"data_converter": converter} if converter else {}
    return await Client.connect(cluster.address, namespace=namespace, tls=tls,
                                api_key=(dest / f"{role}.jwt").read_text().strip(), **kwargs)


def payloads_by_kind(history) -> dict[str, list[Payload]]:
    found: dict[str, list[Payload]] = {}

    def add(kind, payloads):
        found.setdefault(kind, []).extend(payloads)

    for event in history.events:
        if event.HasField("workflow_execution_started_event_attributes"):
            attrs = event.workflow_execution_started_event_attributes
            add("input", attrs.input.payloads)
            add("memo", attrs.memo.fields.values())
        if event.HasField("workflow_execution_signaled_event_attributes"):
            add("signal", event.workflow_execution_signaled_event_attributes.input.payloads)
        if event.HasField("activity_task_scheduled_event_attributes"):
            add("activity input", event.activity_task_scheduled_event_attributes.input.payloads)
        if event.HasField("activity_task_completed_event_attributes"):
            add("activity result", event.activity_task_completed_event_attributes.result.payloads)
        if event.HasField("workflow_execution_completed_event_attributes"):
            add("result", event.workflow_execution_completed_event_attributes.result.payloads)
        if event.HasField("workflow_execution_failed_event_attributes"):
            failure = event.workflow_execution_failed_event_attributes.failure
            assert SECRET not in failure.message and SECRET not in failure.stack_trace
            add("failure", [failure.encoded_attributes, *failure.application_failure_info.details.payloads])
    return found


@pytest.fixture(scope="module")
def payments_history(cluster, codec_url, tmp_path_factory):
    """Two payments workflows run by a payments worker from its own export: one completes, one fails."""
    dest = export(cluster, "payments-worker", codec_url, tmp_path_factory.mktemp("payments-export"))

    async def scenario():
        keys = KeyServiceKeys.from_export(dest)
        client = await connect_exported(cluster, dest, "payments-worker", "payments", data_converter(keys, namespace="payments"))
        queue = f"isolation-{uuid.uuid4()}"
        histories = []
        async with Worker(client, task_queue=queue, workflows=[EveryPayloadWorkflow], activities=[echo]):
            for secret in (SECRET, f"fail {SECRET}"):
                handle = await client.start_workflow(EveryPayloadWorkflow.run, secret, id=f"iso-{uuid.uuid4()}",
                                                     task_queue=queue, memo={"card": SECRET})
                await handle.signal(EveryPayloadWorkflow.note, SECRET)
                try:
                    await asyncio.wait_for(handle.result(), 60)
                except WorkflowFailureError as exc:
                    assert SECRET in str(exc.cause), "the payments worker itself reads its failure"
                histories.append(await handle.fetch_history())
        keys.close()
        return histories

    found: dict[str, list[Payload]] = {}
    for history in asyncio.run(scenario()):
        for kind, payloads in payloads_by_kind(history).items():
            found.setdefault(kind, []).extend(payloads)
    assert set(found) == {"input", "memo", "signal", "activity input", "activity result", "result", "failure"}, set(found)
    return found


def test_payments_history_is_ciphertext_to_an_orders_worker_for_every_payload_kind(cluster, codec_url, payments_history,
                                                                                   tmp_path):
    dest = export(cluster, "orders-worker", codec_url, tmp_path / "orders-export")
    names = sorted(p.name for p in dest.iterdir())
    assert names == ["ca.pem", "key-service.json", "orders-worker.jwt", "orders-worker.key", "orders-worker.pem"]
    orders_keys = KeyServiceKeys.from_export(dest)
    assert orders_keys.ring("orders").keys, "the orders worker does get its own ring"
    for kind, payloads in payments_history.items():
        for payload in payloads:
            assert payload.metadata["encoding"] == ENCODING, kind
            assert payload.metadata[NAMESPACE_HEADER] == b"payments", kind
            assert b"4111" not in payload.data, kind
            with pytest.raises(CodecError):
                decrypt(payload, orders_keys)
    with pytest.raises(KeyServiceError, match="403"):
        orders_keys.ring("payments")
    orders_keys.close()


def test_the_payments_ring_does_open_them(cluster, codec_url, payments_history, tmp_path):
    """The same payloads open with the payments worker's ring: the test above saw real payloads."""
    keys = KeyServiceKeys.from_export(export(cluster, "payments-worker", codec_url, tmp_path / "payments"))
    for kind, payloads in payments_history.items():
        for payload in payloads:
            assert ENCODING != decrypt(payload, keys).metadata.get("encoding"), kind
    keys.close()


def test_the_orders_worker_cannot_read_payments_history_from_the_server_either(cluster, codec_url, tmp_path):
    dest = export(cluster, "orders-worker", codec_url, tmp_path / "orders-export")

    async def attempt():
        client = await connect_exported(cluster, dest, "orders-worker", "payments")
        return [w async for w in client.list_workflows()]

    with pytest.raises(Exception, match="(?i)permission|denied|unauthori"):
        asyncio.run(attempt())
