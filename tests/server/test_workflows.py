"""A worker with the worker token and a starter with the client token run a workflow to
completion; a schedule created with the client token fires, which proves the system worker
reaches the frontend through internal-frontend (it has no token of its own)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from temporalio.client import Schedule, ScheduleActionStartWorkflow, ScheduleIntervalSpec, ScheduleSpec
from temporalio.worker import Worker

from bootstrap.client import connect
from tests.support.workflows import GreetingWorkflow, greet, retry_namespace_cache


async def _connect(cluster, role, namespace="default"):
    return await connect(cluster.address, bundle_dir=cluster.bundle, role=role, namespace=namespace, server_name="localhost")



def test_worker_and_starter_complete_a_workflow(cluster):
    async def scenario():
        worker_client = await _connect(cluster, "worker")
        starter = await _connect(cluster, "client")
        queue = f"tq-{uuid.uuid4()}"
        async with Worker(worker_client, task_queue=queue, workflows=[GreetingWorkflow], activities=[greet]):
            handle = await retry_namespace_cache(
                lambda: starter.start_workflow(GreetingWorkflow.run, "bundle", id=f"wf-{uuid.uuid4()}", task_queue=queue)
            )
            result = await asyncio.wait_for(handle.result(), 60)
        description = await handle.describe()
        return result, description.status.name

    result, status = asyncio.run(scenario())
    assert result == "hello, bundle"
    assert status == "COMPLETED"


def test_schedule_created_with_client_token_fires(cluster):
    async def scenario():
        worker_client = await _connect(cluster, "worker")
        starter = await _connect(cluster, "client")
        queue = f"tq-{uuid.uuid4()}"
        schedule_id = f"sched-{uuid.uuid4()}"
        async with Worker(worker_client, task_queue=queue, workflows=[GreetingWorkflow], activities=[greet]):
            handle = await retry_namespace_cache(
                lambda: starter.create_schedule(
                    schedule_id,
                    Schedule(
                        action=ScheduleActionStartWorkflow(GreetingWorkflow.run, "schedule", id=f"{schedule_id}-wf", task_queue=queue),
                        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=timedelta(seconds=2))]),
                    ),
                )
            )
            try:
                for _ in range(60):
                    info = (await handle.describe()).info
                    if info.num_actions >= 1:
                        return info.num_actions
                    await asyncio.sleep(1)
                return 0
            finally:
                await handle.delete()

    assert asyncio.run(scenario()) >= 1, "the schedule never fired: is internal-frontend serving the system worker?"


def test_postgres_connections_are_tls_with_client_cert(pg_cluster):
    rows = pg_cluster.postgres.psql(
        "select a.usename, s.ssl, coalesce(s.client_dn, '') from pg_stat_activity a "
        "join pg_stat_ssl s using (pid) where a.usename = 'temporal'"
    ).stdout.splitlines()
    assert rows, "the server holds no PostgreSQL connections as user temporal"
    for row in rows:
        user, ssl_on, client_dn = row.split("|")
        assert ssl_on == "t"
        assert "CN=temporal" in client_dn


def test_postgres_refuses_plaintext_and_password_logins(pg_cluster):
    import subprocess

    plain = subprocess.run(
        ["psql", f"host=127.0.0.1 port={pg_cluster.postgres.port} user=temporal dbname=temporal sslmode=disable",
         "-c", "select 1"],
        capture_output=True, text=True,
    )
    assert plain.returncode != 0
    assert "no encryption" in plain.stderr or "reject" in plain.stderr
    no_cert = subprocess.run(
        ["psql", f"host=127.0.0.1 port={pg_cluster.postgres.port} user=temporal dbname=temporal sslmode=require",
         "-c", "select 1"],
        capture_output=True, text=True, env={"PGPASSWORD": "x", "PATH": "/usr/bin:/bin", "PGSSLCERT": "/nonexistent", "PGSSLKEY": "/nonexistent"},
    )
    assert no_cert.returncode != 0
    assert "certificate" in no_cert.stderr.lower()
