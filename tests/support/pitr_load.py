"""Runs INSIDE a container on the compose network (like e2e_client): the load of the
point-in-time recovery test and benchmark.

    python3 -m tests.support.pitr_load start PREFIX RATE   start workflows PREFIX-1, PREFIX-2, ...
                                          at RATE per second (no worker serves their queue: they
                                          stay running) until killed; one JSON line per start the
                                          server acknowledged: {"id": ..., "t": <unix time of the ack>}
    python3 -m tests.support.pitr_load present PREFIX N   PREFIX-1 .. PREFIX-N: prints
                                          {"present": [...], "missing": [...]} (describe each;
                                          NotFound is missing)
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from temporalio.service import RPCError, RPCStatusCode

from bootstrap.client import connect
from tests.support.e2e_client import ADDRESS, BUNDLE, NAMESPACE, SERVER_NAME
from tests.support.workflows import GreetingWorkflow

QUEUE = "pitr-load-unserved"


async def client():
    return await connect(ADDRESS, bundle_dir=BUNDLE, role="client", namespace=NAMESPACE, server_name=SERVER_NAME)


async def start(prefix: str, rate: float) -> None:
    starter = await client()
    print(json.dumps({"ready": time.time()}), flush=True)
    interval, n, next_at = 1 / rate, 0, time.monotonic()
    while True:
        n += 1
        workflow_id = f"{prefix}-{n}"
        try:
            await asyncio.wait_for(starter.start_workflow(GreetingWorkflow.run, "pitr", id=workflow_id, task_queue=QUEUE), 5)
            print(json.dumps({"id": workflow_id, "t": time.time()}), flush=True)
        except Exception as exc:  # the database is gone: keep trying, acknowledge nothing
            print(json.dumps({"failed": workflow_id, "t": time.time(), "error": type(exc).__name__}), flush=True)
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))


async def present(ids: list[str]) -> dict:
    c = await client()
    found, missing = [], []
    for workflow_id in ids:
        try:
            await c.get_workflow_handle(workflow_id).describe()
            found.append(workflow_id)
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
            missing.append(workflow_id)
    return {"ok": True, "present": found, "missing": missing}


def main() -> int:
    command, *args = sys.argv[1:]
    if command == "start":
        asyncio.run(start(args[0], float(args[1])))
        return 0
    if command == "present":
        print(json.dumps(asyncio.run(present([f"{args[0]}-{n}" for n in range(1, int(args[1]) + 1)]))))
        return 0
    print(json.dumps({"ok": False, "error": f"unknown command {command}"}))
    return 2


if __name__ == "__main__":
    sys.exit(main())
