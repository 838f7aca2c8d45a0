"""oidc.groups next to oidc.external, on the real server: a company IdP (the stand-in HTTPS issuer
with a private CA, tests/support/oidc_issuer.py) puts people's groups, of any name, in its groups
claim; the token exchange maps them through oidc.groups; the UI gate trades each person's IdP token
there; the codec server maps in-process; temporal-server trusts the bundle's keys only.

A user in `payments-oncall` sees exactly the mapped namespace through the gate, acts per role, is
refused beyond it, and history names them; a user in no mapped group, or in a group literally
called `payments:admin`, gets nothing and is told why; the IdP token itself opens nothing at the
frontend; the codec server agrees."""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import timedelta

import pytest
import yaml
from temporalio.api.common.v1 import WorkflowType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import (
    DescribeNamespaceRequest,
    ListNamespacesRequest,
    StartWorkflowExecutionRequest,
)
from temporalio.service import RPCStatusCode

from bootstrap.core.pki import utcnow
from tests.support.bundle_services import BundleServices
from tests.support.cluster import LocalCluster
from tests.support.forged_tokens import token as role_token
from tests.support.login_gate import codec_status, connect, namespaces, refusal, run
from tests.support.oidc_issuer import CompanyIssuer
from tests.support.ports import free_port

pytestmark = [pytest.mark.server, pytest.mark.timeout(600)]

CLIENT_ID = "temporal-ui-7d21"
CLAIM = "roles"  # the IdP's groups claim: not the bundle's `groups`


class Stack:
    """The stand-in IdP, the cluster, the exchange, the gate, the codec server."""

    def __init__(self, work):
        self.idp = CompanyIssuer(work / "idp", free_port()).start()
        secret = work / "ui-client-secret"
        secret.write_text("company-idp-client-secret\n")
        oidc = {"enabled": False,
                "groups": {"payments-oncall": ["payments:write"], "Platform SRE": ["temporal-system:read"]},
                "external": {"issuer": self.idp.issuer, "jwks_uri": self.idp.jwks_uri, "client_id": CLIENT_ID,
                             "client_secret_file": str(secret), "ca_file": str(self.idp.ca_file),
                             "groups_claim": CLAIM}}
        self.cluster = LocalCluster(work / "cluster", namespaces=("default", "payments"), oidc=oidc).start_registered()
        self.services = BundleServices(work, self.cluster.config_path, self.cluster.bundle)
        self.work = work
        exchange_port = free_port()
        self.services.start("exchange", ["serve-exchange", "--host", "127.0.0.1", "--port", str(exchange_port)],
                            exchange_port)
        info = work / "cluster-info.json"
        subprocess.run([sys.executable, "-m", "bootstrap", "register-namespaces", *self.services.config_args,
                        "--address", self.cluster.address, "--cluster-info", str(info)],
                       check=True, capture_output=True, text=True, timeout=120)
        keys = ["--jwks-url", f"https://localhost:{self.cluster.jwks_port}/jwks.json", "--jwks-url", self.idp.jwks_uri,
                "--issuer", self.idp.issuer]
        self.gate_port = free_port()
        self.services.start("gate", ["serve-ui-gate", "--host", "127.0.0.1", "--port", str(self.gate_port),
                                     "--upstream", self.cluster.address, "--cluster-info", str(info), *keys,
                                     "--exchange-url", f"https://localhost:{exchange_port}/token"], self.gate_port)
        self.codec_port = free_port()
        self.services.start("codec", ["serve-codec", "--host", "127.0.0.1", "--port", str(self.codec_port),
                                      "--quiet-audit", *keys], self.codec_port)

    def token(self, groups: list[str], subject: str = "00u4ana") -> str:
        return self.idp.user_token(groups, audience=CLIENT_ID, claim=CLAIM, subject=subject)

    def stop(self):
        self.services.stop()
        self.cluster.stop()
        self.idp.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("external-groups"))
    yield stack
    stack.stop()


def test_the_frontend_trusts_the_bundles_keys_and_claim_only(stack):
    authorization = yaml.safe_load((stack.cluster.bundle / "config/temporal.yaml").read_text())["global"]["authorization"]
    assert authorization["jwtKeyProvider"]["keySourceURIs"] == [f"https://localhost:{stack.cluster.jwks_port}/jwks.json"]
    assert (authorization["permissionsClaimName"], authorization["audience"]) == ("groups", CLIENT_ID)


def test_a_payments_oncall_user_gets_exactly_the_mapped_namespace_and_role(stack):
    token = stack.token(["payments-oncall", "staff"])
    workflow_id = f"charge-{uuid.uuid4()}"

    async def check():
        client = await connect(stack, token)
        assert await namespaces(client) == ["payments"]
        assert (await refusal(client.workflow_service.describe_namespace(
            DescribeNamespaceRequest(namespace="default"))))[0] == RPCStatusCode.PERMISSION_DENIED
        await client.workflow_service.start_workflow_execution(StartWorkflowExecutionRequest(
            namespace="payments", workflow_id=workflow_id, workflow_type=WorkflowType(name="Charge"),
            task_queue=TaskQueue(name="payments"), request_id=str(uuid.uuid4()), identity="idp-test"))

    run(check())
    assert stack.cluster.history_events("payments", workflow_id)[0]["principal"] == {"type": "jwt", "name": "user:00u4ana"}


def test_a_group_name_with_spaces_maps_too(stack):
    async def check():
        client = await connect(stack, stack.token(["Platform SRE"], subject="00u9sre"))
        assert await namespaces(client) == ["default", "payments", "temporal-system"]

    run(check())


@pytest.mark.parametrize("groups, shown", [(["staff"], "'staff'"), (["payments:admin"], "'payments:admin'"),
                                           ([], "no group")])
def test_a_user_in_no_mapped_group_gets_nothing_and_is_told_why(stack, groups, shown):
    async def check():
        client = await connect(stack, stack.token(groups, subject="00u7mal"))
        for call in (client.workflow_service.list_namespaces(ListNamespacesRequest()),
                     client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace="payments"))):
            status, message = await refusal(call)
            assert status == RPCStatusCode.PERMISSION_DENIED
            assert shown in message and "oidc.groups" in message, message

    run(check())


def test_the_idp_token_opens_nothing_at_the_frontend_itself(stack):
    async def check():
        for token in (stack.token(["payments-oncall"]), stack.token(["payments:admin"])):
            with pytest.raises(RuntimeError, match="PermissionDenied|Unauthenticated"):
                client = await connect(stack, token, direct=True)
                await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace="payments"))

    run(check())


def test_the_codec_server_applies_the_same_mapping(stack):
    oncall, named = stack.token(["payments-oncall"]), stack.token(["payments:admin"], subject="00u7mal")
    assert codec_status(stack, oncall, "payments") == 200  # payments:write through payments-oncall
    assert codec_status(stack, oncall, "default") == 403
    assert codec_status(stack, named, "payments") == 403  # a group called payments:admin: a name


@pytest.mark.parametrize("lifetime", [3, -5], ids=["3s-left", "expired"])
def test_a_login_token_at_its_end_is_told_to_refresh_not_that_it_lacks_permission(stack, lifetime):
    """The UI server turns UNAUTHENTICATED into 401, on which the UI refreshes the person's token;
    PERMISSION_DENIED would show them "no permission". A token with seconds left would reach the
    exchange or the frontend expired, so the gate does not exchange it."""
    ending = stack.idp.user_token(["payments-oncall"], audience=CLIENT_ID, claim=CLAIM, lifetime=lifetime)
    expired_role_token = role_token(stack.cluster, ["payments:write"], audience=CLIENT_ID,
                               now=utcnow() - timedelta(hours=2))

    async def check():
        status, message = await refusal(describe(await connect(stack, ending)))
        assert status == RPCStatusCode.UNAUTHENTICATED and "refresh" in message, (status, message)
        # A role token is not a login: an expired one keeps the frontend's own answer (it refuses
        # even the client's first, tokenless call when a token is sent).
        with pytest.raises(RuntimeError, match=r"code: PermissionDenied, message: \"Request unauthorized\.\""):
            await connect(stack, expired_role_token)

    run(check())


def describe(client):
    return client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace="payments"))
