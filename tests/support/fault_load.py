"""A steady load for the fault matrix. Runs INSIDE a container on the edge network (the bundle
image, the client volumes read-only, this tests package importable), like e2e_client.py:

    python3 -m tests.support.fault_load LANES

Each lane, over and over: start a workflow with a fresh id, signal it, and move on; the worker
completes it once signalled. A call that fails is counted and retried as an application would
(same workflow id, so a retried start never makes a second workflow), never hidden. On SIGTERM
the lanes finish their current workflow, then every started id must complete: the last line on
stdout is a JSON summary (ids started, completed, late, every call's time and outcome).

    python3 -m tests.support.fault_load finish QUEUE ID...

A fresh worker on QUEUE for the ids that were late, each signalled again (its signal may have
failed for good while the server recovered): those still not complete are lost.

Payloads are encrypted here with the namespace's data keys (codec-keys/, codec-kek/ mounted
read-only), as the bundle's workers do: the codec server only decodes for the Web UI and the CLI,
so the load keeps running while it is down.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import uuid
from datetime import timedelta

from temporalio import workflow
from temporalio.client import WorkflowExecutionStatus
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from bootstrap.client import connect
from tests.support.workflows import greet

BUNDLE = "/bundle"
ADDRESS = os.environ.get("E2E_ADDRESS", "temporal:7233")
SERVER_NAME = os.environ.get("E2E_SERVER_NAME", "temporal")
# An application's patience per call: on two cores shared with three other test processes a
# healthy server has answered a call in over 5 s, which then counted as the fault not yet recovered.
CALL_TIMEOUT = timedelta(seconds=10)
KEYS = f"{BUNDLE}/codec-keys/keys.json"
DRAIN_TIMEOUT = 120  # after SIGTERM: retries of in-flight ids, then every result; later ones are "late"


@workflow.defn
class SignalledWorkflow:
    def __init__(self) -> None:
        self.go = False

    @workflow.run
    async def run(self, name: str) -> str:
        await workflow.wait_condition(lambda: self.go)
        return await workflow.execute_activity(greet, name, start_to_close_timeout=timedelta(seconds=60))

    @workflow.signal
    def proceed(self) -> None:
        self.go = True


def converter():
    from bootstrap.core.codec import data_converter

    return data_converter(KEYS)


class Load:
    def __init__(self):
        self.stop = asyncio.Event()
        self.deadline = float("inf")  # for retries: set on SIGTERM to now + DRAIN_TIMEOUT
        self.calls: list[tuple[float, str, bool, str]] = []  # (unix time, op, ok, error)
        self.started: list[str] = []

    def drain(self) -> None:
        self.deadline = time.time() + DRAIN_TIMEOUT
        self.stop.set()

    async def call(self, op: str, make_call, delivered_before=None) -> bool:
        """Retry until it succeeds (each failure recorded) or the drain deadline passes.
        delivered_before(exc): on a retry, this refusal proves an earlier attempt that failed for us
        had reached the server (what WorkflowAlreadyStartedError proves for a start)."""
        retry = False
        while time.time() < self.deadline:
            try:
                await make_call()
                self.calls.append((time.time(), op, True, ""))
                return True
            except WorkflowAlreadyStartedError:  # a start that failed for us but reached the server
                self.calls.append((time.time(), op, True, "already started"))
                return True
            except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
                if retry and delivered_before is not None and delivered_before(exc):
                    self.calls.append((time.time(), op, True, "delivered by an earlier attempt"))
                    return True
                self.calls.append((time.time(), op, False, f"{type(exc).__name__}({_status(exc)}): {str(exc)[:160]}"))
                retry = True
                await asyncio.sleep(0.5)
        return False

    async def lane(self, client, queue: str, lane: int):
        while not self.stop.is_set():
            workflow_id = f"fault-{lane}-{uuid.uuid4().hex[:12]}"
            started = await self.call("start", lambda: client.start_workflow(
                SignalledWorkflow.run, "fault", id=workflow_id, task_queue=queue, rpc_timeout=CALL_TIMEOUT))
            if started:
                if not self.started:  # whose encrypted input a codec check can decode meanwhile
                    print(json.dumps({"first": workflow_id}), flush=True)
                self.started.append(workflow_id)
                handle = client.get_workflow_handle(workflow_id)
                await self.call("signal", lambda: handle.signal(SignalledWorkflow.proceed, rpc_timeout=CALL_TIMEOUT),
                                delivered_before=_completed_already)
            await asyncio.sleep(0.2)


def _status(exc: BaseException) -> str:
    return getattr(getattr(exc, "status", None), "name", "")  # RPCError: the gRPC status


def _completed_already(exc: BaseException) -> bool:
    """The workflow completes only once signalled: if a retried signal finds it completed, the
    attempt that timed out for us (CANCELLED while the server restarted) was delivered."""
    return _status(exc) == "NOT_FOUND" and "already completed" in str(exc)


async def completed(client, workflow_id: str, deadline: float) -> bool:
    handle = client.get_workflow_handle(workflow_id)
    while time.time() < deadline:
        try:
            result = await asyncio.wait_for(handle.result(), max(1.0, deadline - time.time()))
            info = await handle.describe()
            return result == "hello, fault" and info.status == WorkflowExecutionStatus.COMPLETED
        except Exception:  # noqa: BLE001 - the server may still be recovering: ask again
            await asyncio.sleep(1)
    return False


async def main(lanes: int) -> dict:
    worker_client = await connect(ADDRESS, bundle_dir=BUNDLE, role="worker", server_name=SERVER_NAME,
                                  data_converter=converter())
    starter = await connect(ADDRESS, bundle_dir=BUNDLE, role="client", server_name=SERVER_NAME,
                            data_converter=converter())
    load, queue = Load(), f"fault-{uuid.uuid4().hex[:8]}"
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, load.drain)
    async with Worker(worker_client, task_queue=queue, workflows=[SignalledWorkflow], activities=[greet],
                      workflow_runner=UnsandboxedWorkflowRunner()):
        print(json.dumps({"ready": time.time()}), flush=True)
        await asyncio.gather(*(load.lane(starter, queue, n) for n in range(lanes)))
        deadline = time.time() + DRAIN_TIMEOUT
        done = await asyncio.gather(*(completed(starter, i, deadline) for i in load.started))
    late = [i for i, ok in zip(load.started, done) if not ok]
    return {
        "started": len(load.started),
        "unique": len(set(load.started)),
        "completed": sum(done),
        "queue": queue,
        "late": late,  # not complete within DRAIN_TIMEOUT: `finish` gives them a fresh worker
        "calls": [[round(t, 3), op, ok, err] for t, op, ok, err in load.calls],
    }


async def signalled(client, workflow_id: str, deadline: float) -> None:
    """The signal again, as an application whose signal call failed retries it: a late id may be
    one whose every signal attempt timed out while the server recovered, and it waits for one. A
    workflow the server no longer has stays unsignalled, and so lost."""
    handle = client.get_workflow_handle(workflow_id)
    while time.time() < deadline:
        try:
            await handle.signal(SignalledWorkflow.proceed, rpc_timeout=CALL_TIMEOUT)
            return
        except Exception as exc:  # noqa: BLE001 - retried until the deadline, like the load's calls
            if _status(exc) == "NOT_FOUND":  # completed already, or gone: completed() tells which
                return
            await asyncio.sleep(1)


async def finish(queue: str, ids: list[str]) -> dict:
    """A fresh worker on the load's queue (as an application restarting its worker would), each
    id signalled again, then every id's result: what is still not complete now is lost."""
    client = await connect(ADDRESS, bundle_dir=BUNDLE, role="worker", server_name=SERVER_NAME,
                           data_converter=converter())
    async with Worker(client, task_queue=queue, workflows=[SignalledWorkflow], activities=[greet],
                      workflow_runner=UnsandboxedWorkflowRunner()):
        deadline = time.time() + 180
        await asyncio.gather(*(signalled(client, i, deadline) for i in ids))
        done = await asyncio.gather(*(completed(client, i, deadline) for i in ids))
    return {"finished": [i for i, ok in zip(ids, done) if ok], "lost": [i for i, ok in zip(ids, done) if not ok]}


if __name__ == "__main__":
    if sys.argv[1:2] == ["finish"]:
        print(json.dumps(asyncio.run(finish(sys.argv[2], sys.argv[3:]))), flush=True)
    else:
        print(json.dumps(asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2))), flush=True)
    sys.stdout.flush()
    os._exit(0)
