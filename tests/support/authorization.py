"""One call against the real frontend as a given identity (client certificate, token, CA), reduced
to 'ok', 'denied' or 'refused': the authorization matrix of the server tier."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import timedelta

from google.protobuf.duration_pb2 import Duration
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import (
    DescribeNamespaceRequest,
    PollWorkflowTaskQueueRequest,
    RegisterNamespaceRequest,
)
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode, TLSConfig

from tests.support.workflows import GreetingWorkflow


@dataclass(frozen=True)
class Identity:
    cert: bytes | None
    key: bytes | None
    token: str | None
    ca: bytes


def read(cluster, rel: str) -> bytes:
    return (cluster.bundle / rel).read_bytes()


def identity(cluster, role="client", token=..., cert_role=None) -> Identity:
    cert_role = cert_role or role
    return Identity(
        cert=read(cluster, f"clients/{cert_role}.pem"),
        key=read(cluster, f"clients/{cert_role}.key"),
        token=cluster.token(role) if token is ... else token,
        ca=read(cluster, "trust/ca.pem"),
    )


async def attempt(cluster, who: Identity, action: str, namespace: str = "default") -> str:
    """'ok', 'denied' (authorization refused the call) or 'refused' (TLS refused the connection)."""
    tls = TLSConfig(server_root_ca_cert=who.ca, client_cert=who.cert, client_private_key=who.key, domain="localhost")
    try:
        client = await Client.connect(
            cluster.address, namespace=namespace, tls=tls, api_key=who.token, connect_timeout=timedelta(seconds=5)
        )
    except RuntimeError as exc:
        text = str(exc)
        return "denied" if "PermissionDenied" in text or "Request unauthorized" in text else "refused"
    try:
        await ACTIONS[action](client, namespace)
        return "ok"
    except RPCError as exc:
        if exc.status in (RPCStatusCode.PERMISSION_DENIED, RPCStatusCode.UNAUTHENTICATED):
            return "denied"
        raise


async def _start(client, namespace):
    for _ in range(40):  # a just-registered namespace reaches the frontend cache within ~10s
        try:
            await client.start_workflow(GreetingWorkflow.run, "x", id=f"authz-{uuid.uuid4()}", task_queue="authz")
            return
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
            await asyncio.sleep(0.5)


async def _describe(client, namespace):
    await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace=namespace))


async def _register(client, namespace):
    await client.workflow_service.register_namespace(
        RegisterNamespaceRequest(namespace=f"authz-{uuid.uuid4().hex[:8]}",
                                 workflow_execution_retention_period=Duration(seconds=86400))
    )


async def _poll(client, namespace):
    await _start(client, namespace)  # only worker-capable tokens get here; leaves a task to poll
    await client.workflow_service.poll_workflow_task_queue(
        PollWorkflowTaskQueueRequest(namespace=namespace, task_queue=TaskQueue(name="authz"), identity="authz-test"),
        timeout=timedelta(seconds=5),
    )


ACTIONS = {"start": _start, "describe": _describe, "register": _register, "poll": _poll}


def run(cluster, who, action, namespace="default"):
    return asyncio.run(attempt(cluster, who, action, namespace))
