"""The audit trail in workflow history: with `frontend.enablePrincipalPropagation` on
(templates/dynamic_config.yaml.j2), the real server (PostgreSQL, mTLS, JWT) stamps every history
event a call causes with the caller's token subject, and the history the CLI shows names them.

A workflow started with the `client` role token says `temporal-bundle:client`, the events its
worker causes say `temporal-bundle:worker`, and a signal, cancel, reset or terminate says who sent
it: another role token sent straight to the frontend, or a Web UI user whose company IdP token
went through the UI gate (which forwards the user's own token, so the frontend names the user, not
the gate). Events the server makes for itself (a schedule starting a workflow) say
`temporal/internal`. With propagation off no event has a principal, and every test here fails.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import uuid
from datetime import timedelta

import pytest
from temporalio import workflow
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import ResetWorkflowExecutionRequest
from temporalio.client import Client, Schedule, ScheduleActionStartWorkflow, ScheduleIntervalSpec, ScheduleSpec
from temporalio.service import TLSConfig
from temporalio.worker import Worker

from bootstrap.client import connect
from tests.support.cluster import LocalCluster
from tests.support.ports import free_port
from tests.support.waits import wait_until
from tests.support.oidc_issuer import CompanyIssuer
from tests.support.workflows import retry_namespace_cache

pytestmark = [pytest.mark.server, pytest.mark.timeout(600)]

CLIENT_ID = "temporal-ui-audit"
# An IdP's subject is an opaque user id (Dex: base64 of user id + connector; Okta: 00u...).
UI_USER = "00u8ana3xk2Zq"
ROLES = {"oncall": {"permissions": ["default:write"], "token_lifetime": "1h"}}
STARTER, WORKER, ONCALL = "temporal-bundle:client", "temporal-bundle:worker", "temporal-bundle:oncall"


@workflow.defn(sandboxed=False)
class AwaitPokes:
    """Runs until cancelled, reset or terminated; counts signals."""

    def __init__(self) -> None:
        self.pokes = 0

    @workflow.run
    async def run(self) -> int:
        await workflow.wait_condition(lambda: self.pokes >= 1000)
        return self.pokes

    @workflow.signal
    def poke(self) -> None:
        self.pokes += 1


@pytest.fixture(scope="module")
def issuer(tmp_path_factory):
    company = CompanyIssuer(tmp_path_factory.mktemp("audit-idp"), free_port()).start()
    yield company
    company.stop()


@pytest.fixture(scope="module")
def cluster(issuer, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("cluster-audit")
    secret = workdir / "ui-client-secret"
    secret.write_text("audit-idp-client-secret\n")
    oidc = {"enabled": False, "external": {"issuer": issuer.issuer, "jwks_uri": issuer.jwks_uri, "client_id": CLIENT_ID,
                                           "client_secret_file": str(secret), "ca_file": str(issuer.ca_file)}}
    local = LocalCluster(workdir, driver="postgres", extra_roles=ROLES, oidc=oidc).start_registered()
    yield local
    local.stop()


@pytest.fixture(scope="module")
def gate(cluster, issuer):
    """serve-ui-gate as compose runs it, in front of this cluster, trusting the IdP's keys too."""
    info = cluster.workdir / "cluster-info.json"
    subprocess.run([sys.executable, "-m", "bootstrap", "register-namespaces", "--config", str(cluster.config_path),
                    "--out", str(cluster.bundle), "--address", cluster.address, "--cluster-info", str(info)],
                   check=True, capture_output=True, text=True, timeout=120)
    port = free_port()
    log = cluster.workdir / "ui-gate.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "bootstrap", "serve-ui-gate", "--config", str(cluster.config_path), "--out",
         str(cluster.bundle), "--host", "127.0.0.1", "--port", str(port), "--upstream", cluster.address,
         "--cluster-info", str(info), "--jwks-url", f"https://localhost:{cluster.jwks_port}/jwks.json",
         "--jwks-url", issuer.jwks_uri, "--issuer", issuer.issuer],
        stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True,
    )

    def listening() -> bool:
        assert process.poll() is None, log.read_text()[-2000:]
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_until(listening, 30, "the UI gate")
    yield f"127.0.0.1:{port}"
    process.terminate()
    process.wait(10)


async def _role_client(cluster, role: str) -> Client:
    return await connect(cluster.address, bundle_dir=cluster.bundle, role=role, server_name="localhost")


async def _ui_user_client(cluster, issuer, gate: str) -> Client:
    """What the Web UI server does for a logged-in user: the gate, the UI's certificate, the user's token."""
    bundle = cluster.bundle
    token = issuer.user_token(["default:write"], audience=CLIENT_ID, subject=UI_USER)
    return await Client.connect(
        gate, namespace="default", api_key=token,
        tls=TLSConfig(server_root_ca_cert=(bundle / "trust/ca.pem").read_bytes(),
                      client_cert=(bundle / "ui/client.pem").read_bytes(),
                      client_private_key=(bundle / "ui/client.key").read_bytes(), domain="ui-gate"),
        connect_timeout=timedelta(seconds=10),
    )


@pytest.fixture(params=["role token, direct", "UI user, through the gate"])
def actor(request, cluster, issuer):
    """(connect coroutine factory, the subject history must name) for the one who acts on a workflow."""
    if request.param.startswith("role"):
        return (lambda: _role_client(cluster, "oncall")), ONCALL
    address = request.getfixturevalue("gate")
    return (lambda: _ui_user_client(cluster, issuer, address)), UI_USER


def history(cluster, workflow_id: str, run_id: str) -> list[tuple[str, tuple[str, str] | None]]:
    """(event type, (principal type, name) or None) per event, as `temporal workflow show` prints them."""
    events = cluster.history_events("default", workflow_id, run_id)
    return [(_event_type(e["eventType"]), _principal(e.get("principal"))) for e in events]


def _event_type(name: str) -> str:
    return name.removeprefix("EVENT_TYPE_").replace("_", "").lower()


def _principal(value: dict | None) -> tuple[str, str] | None:
    return (value.get("type", ""), value.get("name", "")) if value else None


def principals_of(events, event_type: str) -> list[tuple[str, str] | None]:
    found = [principal for kind, principal in events if kind == event_type.lower()]
    assert found, f"no {event_type} event in {[kind for kind, _ in events]}"
    return found



async def _first_task_completed(handle) -> int:
    """The event id of the first WorkflowTaskCompleted: the worker has run the workflow once."""
    for _ in range(100):
        async for event in handle.fetch_history_events():
            if event.HasField("workflow_task_completed_event_attributes"):
                return event.event_id
        await asyncio.sleep(0.2)
    raise AssertionError("the worker never completed a workflow task")


async def _until_status(handle, status: str) -> None:
    for _ in range(150):
        if (await handle.describe()).status.name == status:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"the workflow never reached {status}")


def _started_and_acted_on(cluster, act):
    """Start AwaitPokes with the client token under a worker with the worker token, wait for the
    worker's first task, then `act(starter_handle)`; returns (workflow id, what act returned)."""
    async def scenario():
        worker_client = await _role_client(cluster, "worker")
        starter = await _role_client(cluster, "client")
        queue, workflow_id = f"audit-{uuid.uuid4()}", f"audit-wf-{uuid.uuid4()}"
        async with Worker(worker_client, task_queue=queue, workflows=[AwaitPokes]):
            handle = await retry_namespace_cache(
                lambda: starter.start_workflow(AwaitPokes.run, id=workflow_id, task_queue=queue))
            first_task = await _first_task_completed(handle)
            return workflow_id, await act(handle, first_task)

    return asyncio.run(scenario())


def test_signal_and_cancel_name_who_sent_them(cluster, actor):
    connect_actor, subject = actor

    async def act(handle, _first_task):
        client = await connect_actor()
        mine = client.get_workflow_handle(handle.id, run_id=handle.result_run_id)
        await mine.signal(AwaitPokes.poke)
        await mine.cancel()
        await _until_status(handle, "CANCELED")
        return handle.result_run_id

    workflow_id, run_id = _started_and_acted_on(cluster, act)
    events = history(cluster, workflow_id, run_id)
    assert principals_of(events, "WorkflowExecutionStarted") == [("jwt", STARTER)]
    assert set(principals_of(events, "WorkflowTaskCompleted")) == {("jwt", WORKER)}
    assert principals_of(events, "WorkflowExecutionSignaled") == [("jwt", subject)]
    assert principals_of(events, "WorkflowExecutionCancelRequested") == [("jwt", subject)]
    # The cancellation itself is the worker's: its workflow code chose to end cancelled.
    assert principals_of(events, "WorkflowExecutionCanceled") == [("jwt", WORKER)]


def test_reset_and_terminate_name_who_sent_them(cluster, actor):
    connect_actor, subject = actor

    async def act(handle, first_task):
        await handle.signal(AwaitPokes.poke)  # by the starter, after the reset point: reapplied
        client = await connect_actor()
        reset = await client.workflow_service.reset_workflow_execution(ResetWorkflowExecutionRequest(
            namespace="default", workflow_execution=WorkflowExecution(workflow_id=handle.id, run_id=handle.result_run_id),
            reason="audit test", workflow_task_finish_event_id=first_task, request_id=str(uuid.uuid4())))
        new_run = client.get_workflow_handle(handle.id, run_id=reset.run_id)
        await _first_task_completed(new_run)
        await new_run.terminate(reason="audit test")
        return handle.result_run_id, reset.run_id

    workflow_id, (old_run, new_run) = _started_and_acted_on(cluster, act)
    old = history(cluster, workflow_id, old_run)
    assert principals_of(old, "WorkflowExecutionSignaled") == [("jwt", STARTER)]
    # The reset ends the old run: that ending is the resetter's.
    assert principals_of(old, "WorkflowExecutionTerminated") == [("jwt", subject)]
    events = history(cluster, workflow_id, new_run)
    # Events up to the reset point are the old run's, principals kept; the reset's own are the resetter's,
    # and so is the starter's signal it reapplies (a new event, written by the reset).
    assert principals_of(events, "WorkflowExecutionStarted") == [("jwt", STARTER)]
    assert principals_of(events, "WorkflowTaskFailed") == [("jwt", subject)]
    assert principals_of(events, "WorkflowExecutionSignaled") == [("jwt", subject)]
    assert principals_of(events, "WorkflowExecutionTerminated") == [("jwt", subject)]


def test_a_schedule_started_workflow_names_the_server(cluster):
    """The schedule's system workflow starts runs through internal-frontend, whose claim mapper
    names every caller `temporal/internal`: not the person who created the schedule."""
    async def scenario():
        worker_client = await _role_client(cluster, "worker")
        starter = await _role_client(cluster, "client")
        queue, schedule_id = f"audit-{uuid.uuid4()}", f"audit-sched-{uuid.uuid4()}"
        async with Worker(worker_client, task_queue=queue, workflows=[AwaitPokes]):
            schedule = await retry_namespace_cache(lambda: starter.create_schedule(schedule_id, Schedule(
                action=ScheduleActionStartWorkflow(AwaitPokes.run, id=f"{schedule_id}-wf", task_queue=queue),
                spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=timedelta(seconds=2))]))))
            try:
                for _ in range(60):
                    recent = (await schedule.describe()).info.recent_actions
                    if recent:
                        action = recent[0].action
                        return action.workflow_id, action.first_execution_run_id
                    await asyncio.sleep(1)
                raise AssertionError("the schedule never fired")
            finally:
                await schedule.delete()

    workflow_id, run_id = asyncio.run(scenario())
    events = history(cluster, workflow_id, run_id)
    assert principals_of(events, "WorkflowExecutionStarted") == [("temporal", "internal")]
