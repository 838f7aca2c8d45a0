"""Runs INSIDE a container on the compose network (the bundle image: Python SDK + bootstrap.client),
with the bundle's trust/, clients/ and tokens/ volumes mounted read-only under /bundle and this
tests package importable (python3 -m tests.support.e2e_client ...).

    python3 e2e_client.py run WORKFLOW_ID     worker (worker cert + token) and starter (client
                                              cert + token) to a completed workflow
    python3 e2e_client.py describe WORKFLOW_ID  the workflow's status and result, as the client role
    python3 e2e_client.py refused             a call without a token and a connection without a
                                              client certificate must both be refused
    python3 e2e_client.py ui WORKFLOW_ID      the Web UI (mTLS to the frontend) answers with the
                                              forwarded token and refuses without one
    python3 e2e_client.py peer-cert HOST PORT [tls|postgres [CLIENT_CERT|-]]  fingerprint of the cert
                                              a service presents
    python3 e2e_client.py codec               the codec server refuses no token, serves a valid one,
                                              and answers CORS preflight only for the UI origin
    python3 e2e_client.py codec-decode [WORKFLOW_ID]  the codec server decodes (system token, as the
                                              CLI would) WORKFLOW_ID's encrypted input, else a payload
                                              encrypted here (needs codec-keys/, codec-kek/)
    python3 e2e_client.py start WORKFLOW_ID QUEUE   start a workflow no worker serves yet (stays running)
    python3 e2e_client.py finish WORKFLOW_ID QUEUE  a worker on QUEUE completes that workflow
    python3 e2e_client.py history WORKFLOW_ID       status and event types of its history
    python3 e2e_client.py schedule-create ID / schedule-describe ID   an hourly schedule (client role)
    python3 e2e_client.py namespaces          the registered namespaces (system role)

Prints one JSON object on stdout; exit 0 when every expectation held.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import urllib.error
import urllib.request
import uuid

from temporalio.client import Client
from temporalio.service import RPCError, TLSConfig
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from bootstrap.client import RoleCredentials, connect
from tests.support.workflows import GreetingWorkflow, greet, retry_while

BUNDLE = "/bundle"
ADDRESS = os.environ.get("E2E_ADDRESS", "temporal:7233")
SERVER_NAME = os.environ.get("E2E_SERVER_NAME", "temporal")
NAMESPACE = os.environ.get("E2E_NAMESPACE", "default")
UI_URL = os.environ.get("E2E_UI_URL", "https://temporal-ui:8080")
# The browser origin of the Web UI (https://localhost:<published port>), for CORS checks.
UI_ORIGIN = os.environ.get("E2E_UI_ORIGIN", "https://localhost:8080")


async def run_workflow(workflow_id: str) -> dict:
    worker_client = await connect(ADDRESS, bundle_dir=BUNDLE, role="worker", namespace=NAMESPACE, server_name=SERVER_NAME)
    starter = await connect(ADDRESS, bundle_dir=BUNDLE, role="client", namespace=NAMESPACE, server_name=SERVER_NAME)
    queue = f"e2e-{uuid.uuid4().hex[:8]}"
    async with Worker(
        worker_client,
        task_queue=queue,
        workflows=[GreetingWorkflow],
        activities=[greet],
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        result = await asyncio.wait_for(
            starter.execute_workflow(GreetingWorkflow.run, "compose", id=workflow_id, task_queue=queue), 60
        )
    return {"ok": result == "hello, compose", "result": result, "workflow_id": workflow_id}


async def describe(workflow_id: str) -> dict:
    client = await connect(ADDRESS, bundle_dir=BUNDLE, role="client", namespace=NAMESPACE, server_name=SERVER_NAME)
    handle = client.get_workflow_handle(workflow_id)
    info = await handle.describe()
    result = await handle.result()
    status = info.status.name if info.status else None
    return {"ok": status == "COMPLETED" and result == "hello, compose", "status": status, "result": result}


async def start(workflow_id: str, queue: str) -> dict:
    client = await connect(ADDRESS, bundle_dir=BUNDLE, role="client", namespace=NAMESPACE, server_name=SERVER_NAME)
    await client.start_workflow(GreetingWorkflow.run, "compose", id=workflow_id, task_queue=queue)
    return {"ok": True, "workflow_id": workflow_id}


async def finish(workflow_id: str, queue: str) -> dict:
    worker_client = await connect(ADDRESS, bundle_dir=BUNDLE, role="worker", namespace=NAMESPACE, server_name=SERVER_NAME)
    async with Worker(worker_client, task_queue=queue, workflows=[GreetingWorkflow], activities=[greet],
                      workflow_runner=UnsandboxedWorkflowRunner()):
        result = await asyncio.wait_for(worker_client.get_workflow_handle(workflow_id).result(), 60)
    return {"ok": result == "hello, compose", "result": result}


async def history(workflow_id: str) -> dict:
    client = await connect(ADDRESS, bundle_dir=BUNDLE, role="client", namespace=NAMESPACE, server_name=SERVER_NAME)
    handle = client.get_workflow_handle(workflow_id)
    info = await handle.describe()
    events = [event.event_type for event in (await handle.fetch_history()).events]
    return {"ok": bool(events), "status": info.status.name if info.status else None, "events": events}


async def schedule(action: str, schedule_id: str) -> dict:
    from datetime import timedelta

    from temporalio.client import Schedule, ScheduleActionStartWorkflow, ScheduleIntervalSpec, ScheduleSpec

    client = await connect(ADDRESS, bundle_dir=BUNDLE, role="client", namespace=NAMESPACE, server_name=SERVER_NAME)
    if action == "create":
        await client.create_schedule(schedule_id, Schedule(
            action=ScheduleActionStartWorkflow(GreetingWorkflow.run, "schedule", id=f"{schedule_id}-run", task_queue="dr-schedule"),
            spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=timedelta(hours=1))]),
        ))
    described = await described_schedule(client, schedule_id)
    return {"ok": described.id == schedule_id, "id": described.id, "paused": described.schedule.state.paused}


NOT_YET = {"DEADLINE_EXCEEDED", "UNAVAILABLE", "CANCELLED", "FAILED_PRECONDITION"}  # a refusal is not retried


async def described_schedule(client: Client, schedule_id: str):
    """DescribeSchedule queries the schedule's own workflow, which Temporal's worker service runs:
    on a busy host its first workflow task can come later than the query's deadline, and a client
    asks again (for up to a minute), as the CLI's user would."""
    return await retry_while(client.get_schedule_handle(schedule_id).describe,
                             lambda exc: isinstance(exc, RPCError) and exc.status.name in NOT_YET, 30, 2)


async def namespaces() -> dict:
    from temporalio.api.workflowservice.v1 import ListNamespacesRequest

    client = await connect(ADDRESS, bundle_dir=BUNDLE, role="system", namespace=NAMESPACE, server_name=SERVER_NAME)
    response = await client.workflow_service.list_namespaces(ListNamespacesRequest(page_size=100))
    names = sorted(ns.namespace_info.name for ns in response.namespaces)
    return {"ok": bool(names), "namespaces": names}


async def refused() -> dict:
    creds = RoleCredentials.load(BUNDLE, "client")
    out: dict = {}
    # 1. A valid client certificate but no token: the connection works (GetSystemInfo is exempt),
    #    every namespace call is denied by the authorizer.
    no_token = await Client.connect(ADDRESS, namespace=NAMESPACE, tls=creds.tls_config(SERVER_NAME))
    try:
        await no_token.get_workflow_handle("does-not-matter").describe()
        out["no_token"] = "ALLOWED"
    except RPCError as exc:
        out["no_token"] = f"{exc.status.name}: {exc.message}"
    # 2. A valid token but no client certificate: the TLS handshake is refused.
    no_cert_tls = TLSConfig(server_root_ca_cert=creds.ca, domain=SERVER_NAME)
    try:
        client = await Client.connect(ADDRESS, namespace=NAMESPACE, tls=no_cert_tls, api_key=creds.token)
        await client.get_workflow_handle("does-not-matter").describe()
        out["no_cert"] = "ALLOWED"
    except Exception as exc:  # connect fails with a RuntimeError carrying the transport error
        out["no_cert"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    # 3. A plaintext connection (no TLS at all; the SDK would turn TLS on for an api_key) is refused.
    try:
        client = await asyncio.wait_for(Client.connect(ADDRESS, namespace=NAMESPACE, api_key=creds.token, tls=False), 20)
        await client.get_workflow_handle("does-not-matter").describe()
        out["plaintext"] = "ALLOWED"
    except Exception as exc:
        out["plaintext"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    out["ok"] = (
        out["no_token"].startswith("PERMISSION_DENIED")
        and "unauthorized" in out["no_token"].lower()
        and out["no_cert"] != "ALLOWED"
        and out["plaintext"] != "ALLOWED"
    )
    return out


def ui(workflow_id: str) -> dict:
    token = RoleCredentials.load(BUNDLE, "client").token
    url = f"{UI_URL}/api/v1/namespaces/{NAMESPACE}/workflows/{workflow_id}"

    import ssl

    context = ssl.create_default_context(cafile=f"{BUNDLE}/trust/ca.pem")  # the UI serves HTTPS

    def get(headers: dict) -> tuple[int, str]:
        request = urllib.request.Request(url, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=20, context=context) as response:
                return response.status, response.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")

    # With OIDC on, ui-server (2.58) verifies every token against Dex before forwarding it: a
    # role token, valid for the frontend, is refused by the UI itself; so is no token.
    with_token, body = get({"Authorization": f"Bearer {token}"})
    without_token, denied = get({})
    return {
        "ok": with_token == 401 and workflow_id not in body and without_token == 401,
        "with_token": with_token,
        "without_token": without_token,
        "denied_body": denied[:200],
    }


def codec() -> dict:
    """The codec server on the compose network: 401 without a token, serves the system token,
    and answers CORS preflight only for the UI origin."""
    import base64
    import ssl

    context = ssl.create_default_context(cafile=f"{BUNDLE}/trust/ca.pem")
    token = RoleCredentials.load(BUNDLE, "system").token
    plain = {"metadata": {"encoding": base64.b64encode(b"json/plain").decode()}, "data": base64.b64encode(b'"hi"').decode()}
    body = json.dumps({"payloads": [plain]}).encode()

    def call(method: str, headers: dict, data: bytes | None = None) -> int:
        request = urllib.request.Request("https://codec-server:8888/decode", data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=20, context=context) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    json_headers = {"Content-Type": "application/json", "X-Namespace": NAMESPACE}
    out = {
        "no_token": call("POST", json_headers, body),
        "system_token": call("POST", {**json_headers, "Authorization": f"Bearer {token}"}, body),
        "preflight_ui": call("OPTIONS", {"Origin": UI_ORIGIN, "Access-Control-Request-Method": "POST"}),
        "preflight_other": call("OPTIONS", {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}),
    }
    out["ok"] = out["no_token"] == 401 and out["system_token"] == 200 and out["preflight_ui"] in (200, 204) \
        and out["preflight_other"] == 403
    return out


async def encrypted_input(workflow_id: str | None):
    """The first input payload of workflow_id's history as stored (encrypted by its starter), or a
    payload encrypted here with the namespace's data keys."""
    from temporalio.api.common.v1 import Payload

    from bootstrap.core.codec import KeyringFile, encrypt

    if workflow_id is None:
        plain = Payload(metadata={"encoding": b"json/plain"}, data=b'"fault"')
        return encrypt(plain, KeyringFile(f"{BUNDLE}/codec-keys/keys.json").current(), NAMESPACE)
    client = await connect(ADDRESS, bundle_dir=BUNDLE, role="client", namespace=NAMESPACE, server_name=SERVER_NAME)
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    return history.events[0].workflow_execution_started_event_attributes.input.payloads[0]


def codec_decode(workflow_id: str | None = None) -> dict:
    import base64
    import ssl

    from google.protobuf.json_format import MessageToDict

    from bootstrap.core.codec import is_encrypted

    payload = asyncio.run(encrypted_input(workflow_id))
    body = json.dumps({"payloads": [MessageToDict(payload)]}).encode()
    token = RoleCredentials.load(BUNDLE, "system").token
    request = urllib.request.Request("https://codec-server:8888/decode", data=body, method="POST", headers={
        "Content-Type": "application/json", "X-Namespace": NAMESPACE, "Authorization": f"Bearer {token}"})
    context = ssl.create_default_context(cafile=f"{BUNDLE}/trust/ca.pem")
    out = {"encrypted": is_encrypted(payload)}
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            decoded = json.loads(response.read())["payloads"][0]
    except (OSError, ValueError, KeyError) as exc:  # URLError (down, name gone) and HTTPError are OSErrors
        return {**out, "ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    out["plaintext"] = base64.b64decode(decoded.get("data", "")).decode(errors="replace")
    return {**out, "ok": out["encrypted"] and out["plaintext"] == '"fault"'}


def peer_cert(host: str, port: str, protocol: str = "tls", client_cert: str = "clients/client") -> dict:
    """SHA-256 fingerprint of the certificate a service presents now (PostgreSQL: after its
    SSLRequest), to prove a rotated certificate is served without a restart. Every service here
    presents a server-domain certificate (trust/ca.pem); client_cert is the bundle-relative cert
    (without .pem) of the trust domain the service admits, or "-" for none (JWKS asks for none)."""
    import hashlib
    import socket
    import ssl
    import struct

    context = ssl.create_default_context(cafile=f"{BUNDLE}/trust/ca.pem")
    if client_cert != "-":
        context.load_cert_chain(f"{BUNDLE}/{client_cert}.pem", f"{BUNDLE}/{client_cert}.key")
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        if protocol == "postgres":
            raw.sendall(struct.pack("!ii", 8, 80877103))  # SSLRequest
            if raw.recv(1) != b"S":
                return {"ok": False, "error": "server refused TLS"}
        with context.wrap_socket(raw, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
    return {"ok": True, "sha256": hashlib.sha256(der).hexdigest()}


async def start_encrypted(workflow_id: str, namespace: str, secret: str) -> dict:
    """Starts GreetingWorkflow(secret) with the payload encrypted for `namespace` on a task queue
    no worker polls: it stays Running, for the Web UI tests (decrypt, terminate)."""
    from bootstrap.core.codec import data_converter

    converter = data_converter(f"{BUNDLE}/codec-keys/keys.json")
    client = await connect(ADDRESS, bundle_dir=BUNDLE, role="client", namespace=namespace, server_name=SERVER_NAME,
                           data_converter=converter)
    handle = await client.start_workflow(GreetingWorkflow.run, secret, id=workflow_id, task_queue="no-worker-ui-test")
    return {"ok": True, "workflow_id": handle.id, "namespace": namespace}


def main() -> int:
    command, *args = sys.argv[1:]
    if command == "start-encrypted":
        out = asyncio.run(start_encrypted(*args))
    elif command == "run":
        out = asyncio.run(run_workflow(args[0]))
    elif command == "describe":
        out = asyncio.run(describe(args[0]))
    elif command == "refused":
        out = asyncio.run(refused())
    elif command == "ui":
        out = ui(args[0])
    elif command == "codec":
        out = codec()
    elif command == "codec-decode":
        out = codec_decode(*args)
    elif command in ("start", "finish", "history"):
        out = asyncio.run({"start": start, "finish": finish, "history": history}[command](*args))
    elif command.startswith("schedule-"):
        out = asyncio.run(schedule(command.removeprefix("schedule-"), args[0]))
    elif command == "namespaces":
        out = asyncio.run(namespaces())
    elif command == "peer-cert":
        out = peer_cert(*args)
    else:
        raise SystemExit(f"unknown command {command}")
    print(json.dumps(out))
    sys.stdout.flush()
    # The SDK's Rust runtime can abort a finalising interpreter; every result is printed already.
    os._exit(0 if out.get("ok") else 1)


if __name__ == "__main__":
    main()
