"""Calls people make through the UI gate and the codec server, for the server tier's login tests
(a `stack` with `cluster`, `gate_port` and `codec_port`: the gate, codec server and cluster it
started): a Temporal client through the gate or straight to the frontend, and a codec decode."""

from __future__ import annotations

import asyncio
import gc
import ssl
import urllib.error
import urllib.request
from datetime import timedelta

from temporalio.api.workflowservice.v1 import ListNamespacesRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode, TLSConfig


async def connect(stack, token: str, direct: bool = False) -> Client:
    bundle = stack.cluster.bundle
    cert, name, address = ("ui/client", "ui-gate", f"127.0.0.1:{stack.gate_port}")
    if direct:  # straight to the frontend, with a client certificate of the client domain
        cert, name, address = ("clients/client", "localhost", stack.cluster.address)
    tls = TLSConfig(server_root_ca_cert=(bundle / "trust/ca.pem").read_bytes(),
                    client_cert=(bundle / f"{cert}.pem").read_bytes(),
                    client_private_key=(bundle / f"{cert}.key").read_bytes(), domain=name)
    return await Client.connect(address, namespace="payments", api_key=token, tls=tls,
                                connect_timeout=timedelta(seconds=10))


def run(coro):
    try:
        return asyncio.run(coro)
    finally:
        gc.collect()  # the gate holds one address to 8 connections: close this test's


async def refusal(call) -> tuple[RPCStatusCode | None, str]:
    try:
        await call
    except RPCError as exc:
        return exc.status, exc.message
    return None, ""


async def namespaces(client) -> list[str]:
    answer = await client.workflow_service.list_namespaces(ListNamespacesRequest(page_size=100))
    return sorted(n.namespace_info.name for n in answer.namespaces)


def codec_status(stack, token: str, namespace: str) -> int:
    ctx = ssl.create_default_context(cafile=str(stack.cluster.bundle / "trust" / "ca.pem"))
    request = urllib.request.Request(f"https://localhost:{stack.codec_port}/decode", data=b'{"payloads": []}',
                                     headers={"Content-Type": "application/json", "X-Namespace": namespace,
                                              "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, context=ctx, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
