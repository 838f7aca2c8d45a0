"""Tiny workflow + activity used by the real-server tests and benchmarks."""

import asyncio
from datetime import timedelta

from temporalio import activity, workflow


@activity.defn
async def greet(name: str) -> str:
    return f"hello, {name}"


@workflow.defn
class GreetingWorkflow:
    @workflow.run
    async def run(self, name: str) -> str:
        return await workflow.execute_activity(greet, name, start_to_close_timeout=timedelta(seconds=30))


async def retry_while(coro_factory, transient, attempts: int, pause: float):
    """coro_factory() again, `pause` seconds apart, while it fails with an error transient(exc)
    accepts; any other error, or the last attempt's, is raised."""
    for attempt in range(attempts):
        try:
            return await coro_factory()
        except Exception as exc:  # noqa: BLE001 - transient() picks; the rest is raised
            if not transient(exc) or attempt == attempts - 1:
                raise
            await asyncio.sleep(pause)


async def retry_namespace_cache(coro_factory, attempts=40):
    """coro_factory() until it stops failing with "not found": a just-registered namespace reaches
    the frontend's cache within ~10 s, and until then calls on it fail."""
    return await retry_while(coro_factory, lambda exc: "not found" in str(exc).lower(), attempts, 0.5)
