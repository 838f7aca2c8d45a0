"""Register the configured namespaces on a running cluster, with the system role's cert + token.

Idempotent: an existing namespace is fine; a retention that drifted from the config is reported,
and updated only when asked.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from datetime import timedelta

from ..client import RoleCredentials
from ..core.config import BundleConfig, Namespace
from ..errors import BundleError

AUTH_CODES = ("PERMISSION_DENIED", "UNAUTHENTICATED")


@dataclass(frozen=True)
class Outcome:
    namespace: str
    action: str  # registered | exists | drift | updated
    detail: str = ""


# The job starts with the server container, so the frontend usually answers within seconds:
# poll briskly that long (a refused connection costs nothing), then back off up to 5 s.
BRISK_POLL_S, BRISK_WINDOW_S, MAX_POLL_S = 0.1, 30.0, 5.0


async def wait_for_frontend(target: str, creds: RoleCredentials, server_name: str, timeout: float):
    """Connect (mTLS; GetSystemInfo needs no token) and pass a gRPC health check: every 0.1 s
    for the first 30 s, then with exponential backoff up to 5 s. Returns the connected client."""
    from temporalio.client import Client

    started = time.monotonic()
    deadline, delay, last = started + timeout, BRISK_POLL_S, "no attempt made"
    while True:
        try:
            client = await Client.connect(
                target, tls=creds.tls_config(server_name), api_key=creds.token, connect_timeout=timedelta(seconds=5)
            )
            if await client.service_client.check_health():
                return client
            last = "health check reported NOT_SERVING"
        except Exception as exc:  # the SDK raises plain RuntimeError for transport/TLS failures
            last = _one_line(exc)
        if time.monotonic() + delay > deadline:
            raise BundleError(f"frontend {target} not ready after {timeout:.0f}s: {last}")
        await asyncio.sleep(delay)
        if time.monotonic() - started > BRISK_WINDOW_S:
            delay = min(delay * 2, MAX_POLL_S)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    status = re.search(r'code: (\w+), message: "([^"]*)"', text)
    if status:  # the SDK's Rust core wraps gRPC statuses in a long debug dump
        return f"{status.group(1)}: {status.group(2)}"
    return text[:300]


async def ensure_namespace(client, ns: Namespace, update_retention: bool) -> Outcome:
    from google.protobuf.duration_pb2 import Duration
    from temporalio.api.namespace.v1 import NamespaceConfig, UpdateNamespaceInfo
    from temporalio.api.workflowservice.v1 import (
        DescribeNamespaceRequest,
        RegisterNamespaceRequest,
        UpdateNamespaceRequest,
    )
    from temporalio.service import RPCError, RPCStatusCode

    service = client.workflow_service
    retention = Duration(seconds=int(ns.retention.total_seconds()))
    try:
        described = await service.describe_namespace(DescribeNamespaceRequest(namespace=ns.name))
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise
        try:
            await service.register_namespace(
                RegisterNamespaceRequest(
                    namespace=ns.name, description=ns.description, workflow_execution_retention_period=retention
                )
            )
        except RPCError as exc2:
            if exc2.status != RPCStatusCode.ALREADY_EXISTS:  # a concurrent run won the race
                raise
        return Outcome(ns.name, "registered", f"retention {ns.retention.days}d")
    current = described.config.workflow_execution_retention_ttl.ToTimedelta()
    if current == ns.retention:
        return Outcome(ns.name, "exists", "already exists, skipped")
    drift = f"retention is {current.days}d on the server, {ns.retention.days}d in the config"
    if not update_retention:
        return Outcome(ns.name, "drift", drift + " (use --update-retention to apply)")
    await service.update_namespace(
        UpdateNamespaceRequest(
            namespace=ns.name,
            config=NamespaceConfig(workflow_execution_retention_ttl=retention),
            update_info=UpdateNamespaceInfo(description=ns.description),
        )
    )
    return Outcome(ns.name, "updated", drift + "; updated")


@dataclass(frozen=True)
class Registration:
    outcomes: list[Outcome]
    # The frontend's GetClusterInfo answer (protobuf JSON): the UI gate serves it to users whose
    # roles name namespaces only, so it never needs a system token of its own.
    cluster_info: str
    # Seconds from the start of the job until the frontend passed its health check, and until
    # every namespace was usable (what a slow `make up` is explained by).
    frontend_ready_s: float = 0.0
    usable_s: float = 0.0


async def register_all(
    config: BundleConfig, creds: RoleCredentials, target: str, server_name: str, timeout: float, update_retention: bool
) -> Registration:
    started = time.monotonic()
    deadline = started + timeout
    client = await wait_for_frontend(target, creds, server_name, timeout)
    frontend_ready = time.monotonic() - started
    # Register every namespace first, then wait: the frontend's namespace cache picks them all up
    # in one refresh, instead of one refresh per namespace. The calls of each step run side by
    # side: this job is the last step of `make up` before the UI starts.
    *outcomes, cluster_info = await asyncio.gather(
        *(_named(ns, while_starting(lambda ns=ns: ensure_namespace(client, ns, update_retention), deadline))
          for ns in config.namespaces),
        _cluster_info(client, deadline), return_exceptions=True)
    _raise_first_error([*outcomes, cluster_info])
    # Only a namespace registered by this run can be missing from the frontend's cache: one that
    # existed before was loaded when the frontend started (its registry reads every namespace
    # before serving), or is read through from the database on its first use. So a restart,
    # where every namespace exists, ends after one round of calls.
    registered = {o.namespace for o in outcomes if o.action == "registered"}
    waited = await asyncio.gather(
        *(_named(ns, wait_until_usable(client, ns.name, deadline)) for ns in config.namespaces if ns.name in registered),
        return_exceptions=True)
    _raise_first_error(waited)
    return Registration(outcomes, cluster_info, frontend_ready, time.monotonic() - started)


def _raise_first_error(results: list) -> None:
    """Re-raise the first exception among gathered results (namespaces come first: a namespace's
    error is the likelier cause of a failed cluster info call too)."""
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def _cluster_info(client, deadline: float) -> str:
    """The frontend's GetClusterInfo answer as protobuf JSON (asked for in the first round of calls,
    so retried like them while the frontend is still starting)."""
    from google.protobuf import json_format
    from temporalio.api.workflowservice.v1 import GetClusterInfoRequest
    from temporalio.service import RPCError

    try:
        info = await while_starting(lambda: client.workflow_service.get_cluster_info(GetClusterInfoRequest()), deadline)
    except RPCError as exc:
        raise BundleError(f"GetClusterInfo: {exc.status.name}: {_one_line(exc)}") from None
    return json_format.MessageToJson(info, sort_keys=True)


async def while_starting(call, deadline: float):
    """`call()` again while the frontend answers UNAVAILABLE: the job starts with the server and
    reaches it as soon as its health check passes, when a dependency may still be warming up.
    Registering is idempotent (an existing namespace is 'exists'), so a retry is safe."""
    from temporalio.service import RPCStatusCode

    return await _retrying(call, RPCStatusCode.UNAVAILABLE, deadline, BRISK_POLL_S)


async def _retrying(call, retry_on, deadline: float, interval: float):
    """`call()` until it succeeds or fails with a status other than `retry_on`, or the deadline passes."""
    from temporalio.service import RPCError

    while True:
        try:
            return await call()
        except RPCError as exc:
            if exc.status != retry_on or time.monotonic() > deadline:
                raise
        await asyncio.sleep(interval)


async def _named(ns: Namespace, call):
    """A call about one namespace, its RPC error turned into one line naming the namespace."""
    from temporalio.service import RPCError

    try:
        return await call
    except RPCError as exc:
        hint = " (the system token needs temporal-system:admin)" if exc.status.name in AUTH_CODES else ""
        raise BundleError(f"namespace {ns.name}: {exc.status.name}: {_one_line(exc)}{hint}") from None


async def wait_until_usable(client, namespace: str, deadline: float) -> None:
    """A new namespace reaches the frontend's namespace cache some seconds after registration;
    until then every call on it is 'not found'. Return once workflow APIs see it, so that a
    completed registration job means the namespace can be used right away."""
    from temporalio.api.workflowservice.v1 import ListWorkflowExecutionsRequest
    from temporalio.service import RPCStatusCode

    request = ListWorkflowExecutionsRequest(namespace=namespace, page_size=1)
    # The frontend caches a namespace's absence for 1 s (its read-through miss cache): poll
    # finely, so the job ends right after that second, not up to half a second later.
    await _retrying(lambda: client.workflow_service.list_workflow_executions(request), RPCStatusCode.NOT_FOUND,
                    deadline, 0.1)


def server_accepts_key(config: BundleConfig, bundle_dir, key, target: str, server_name: str) -> bool:
    """True when the frontend validates a token signed by `key` (GetSystemInfo, which any valid
    token may call). False when it answers 'unauthorized', i.e. it has not fetched the key yet."""
    from temporalio.client import Client

    from ..core.tokens import mint_token

    token = mint_token(key, role="rotation-probe", permissions=[], issuer=config.jwt.issuer,
                       audience=config.jwt.audience, lifetime=timedelta(minutes=1))
    creds = RoleCredentials.load(bundle_dir, "system", with_token=False)

    async def attempt() -> bool:
        try:
            await Client.connect(target, tls=creds.tls_config(server_name), api_key=token.encoded,
                                 connect_timeout=timedelta(seconds=5))
            return True
        except RuntimeError as exc:
            if "PermissionDenied" in str(exc) or "unauthorized" in str(exc):
                return False
            raise BundleError(f"probe of {target} failed: {_one_line(exc)}") from None

    return asyncio.run(attempt())
