"""Runs INSIDE a container on the compose network (like e2e_client.py, whose volumes and
environment it shares): workflows that wait across `make upgrade`.

    python3 -m tests.support.upgrade_client start QUEUE TIMER_ID SIGNAL_ID SECONDS
        a worker on QUEUE starts a workflow sleeping SECONDS and one waiting for a signal, and
        stops once both have a timer / a completed first workflow task (they then wait on the server)
    python3 -m tests.support.upgrade_client finish QUEUE TIMER_ID SIGNAL_ID
        a worker on QUEUE; signal the waiting workflow; both must complete
    python3 -m tests.support.upgrade_client reader WORKFLOW_ID
        the `reader` role (<ns>:read) can describe WORKFLOW_ID and is denied starting a workflow
    python3 -m tests.support.upgrade_client history WORKFLOW_ID
        its status and event type names (EVENT_TYPE_TIMER_FIRED, ...), as the client role

Prints one JSON object on stdout; exit 0 when every expectation held.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import timedelta

from temporalio import workflow
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from bootstrap.client import connect
from tests.support.e2e_client import ADDRESS, BUNDLE, NAMESPACE, SERVER_NAME

SIGNAL_VALUE = "go after the upgrade"


@workflow.defn
class SleepWorkflow:
    @workflow.run
    async def run(self, seconds: int) -> str:
        await workflow.sleep(timedelta(seconds=seconds))
        return f"slept {seconds}s"


@workflow.defn
class SignalWorkflow:
    def __init__(self) -> None:
        self.value: str | None = None

    @workflow.signal
    def proceed(self, value: str) -> None:
        self.value = value

    @workflow.run
    async def run(self) -> str:
        await workflow.wait_condition(lambda: self.value is not None)
        return f"signalled: {self.value}"


def worker(client: Client, queue: str) -> Worker:
    return Worker(client, task_queue=queue, workflows=[SleepWorkflow, SignalWorkflow],
                  workflow_runner=UnsandboxedWorkflowRunner())


async def event_types(client: Client, workflow_id: str) -> list[str]:
    return [e.event_type for e in (await client.get_workflow_handle(workflow_id).fetch_history()).events]


async def wait_for_event(client: Client, workflow_id: str, wanted: int, deadline: float = 60) -> None:
    for _ in range(int(deadline * 2)):
        if wanted in await event_types(client, workflow_id):
            return
        await asyncio.sleep(0.5)
    raise TimeoutError(f"{workflow_id}: no event {wanted} within {deadline}s")


async def start(queue: str, timer_id: str, signal_id: str, seconds: str) -> dict:
    from temporalio.api.enums.v1 import EventType

    client = await connect(ADDRESS, bundle_dir=BUNDLE, role="worker", namespace=NAMESPACE, server_name=SERVER_NAME)
    async with worker(client, queue):
        await client.start_workflow(SleepWorkflow.run, int(seconds), id=timer_id, task_queue=queue)
        await client.start_workflow(SignalWorkflow.run, id=signal_id, task_queue=queue)
        await wait_for_event(client, timer_id, EventType.EVENT_TYPE_TIMER_STARTED)
        await wait_for_event(client, signal_id, EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED)
    return {"ok": True}


async def finish(queue: str, timer_id: str, signal_id: str) -> dict:
    client = await connect(ADDRESS, bundle_dir=BUNDLE, role="worker", namespace=NAMESPACE, server_name=SERVER_NAME)
    async with worker(client, queue):
        await client.get_workflow_handle(signal_id).signal(SignalWorkflow.proceed, SIGNAL_VALUE)
        results = await asyncio.wait_for(asyncio.gather(
            client.get_workflow_handle(timer_id).result(), client.get_workflow_handle(signal_id).result()), 120)
    return {"ok": results[1] == f"signalled: {SIGNAL_VALUE}" and results[0].startswith("slept "), "results": results}


async def history(workflow_id: str) -> dict:
    from temporalio.api.enums.v1 import EventType

    client = await connect(ADDRESS, bundle_dir=BUNDLE, role="client", namespace=NAMESPACE, server_name=SERVER_NAME)
    info = await client.get_workflow_handle(workflow_id).describe()
    events = [EventType.Name(t) for t in await event_types(client, workflow_id)]
    return {"ok": bool(events), "status": info.status.name if info.status else None, "events": events}


async def reader(workflow_id: str) -> dict:
    from temporalio.service import RPCError, RPCStatusCode

    client = await connect(ADDRESS, bundle_dir=BUNDLE, role="reader", namespace=NAMESPACE, server_name=SERVER_NAME)
    status = (await client.get_workflow_handle(workflow_id).describe()).status
    try:
        await client.start_workflow(SignalWorkflow.run, id=f"{workflow_id}-by-reader", task_queue="reader-denied")
        start = "ALLOWED"
    except RPCError as exc:
        start = f"{exc.status.name}: {exc.message}"
    denied = start.startswith(RPCStatusCode.PERMISSION_DENIED.name)
    return {"ok": status is not None and denied, "described": status.name if status else None, "start": start}


def main() -> None:
    command, *args = sys.argv[1:]
    out = asyncio.run({"start": start, "finish": finish, "history": history, "reader": reader}[command](*args))
    print(json.dumps(out))
    sys.stdout.flush()
    os._exit(0 if out.get("ok") else 1)  # as e2e_client: the SDK runtime can abort a finalising interpreter


if __name__ == "__main__":
    main()
