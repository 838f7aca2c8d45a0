"""The UI gate: a gRPC proxy between the Web UI server and the frontend, so that a user who holds
roles on some namespaces only (`orders:read`) can use the UI.

UI 2.58.1 awaits two cluster-scoped calls before it shows any page, GetClusterInfo and
ListNamespaces, and Temporal's default authorizer grants those only through `temporal-system:<role>`
(which reads every namespace). The gate forwards every call as it came, the caller's token
included, so the frontend stays the one that authorizes. Only when the frontend refuses one of
those two calls with PERMISSION_DENIED, and the caller's token verifies (signature from the same
key sources as the server, audience, issuer, expiry) and grants a role on at least one namespace,
does the gate answer itself:

  GetClusterInfo   the cluster's answer recorded by the namespace registration job (which holds
                   the system role); the gate itself holds no token at all
  ListNamespaces   DescribeNamespace for each namespace the token names, sent upstream with the
                   caller's own token: the list holds exactly what the frontend lets them read

Nothing else is answered or changed. Only the WorkflowService, the OperatorService and the gRPC
health check are forwarded (the UI uses nothing else); AdminService and anything unknown get
UNIMPLEMENTED from the gate.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import grpc

from .auth import SYSTEM_NAMESPACE, Authenticator, ROLE_BITS, role_for
from .events import Refusal, clip, log_event
from ..core.tokens import PERMISSIONS_CLAIM

WORKFLOW_SERVICE = "/temporal.api.workflowservice.v1.WorkflowService/"
FORWARDED_PREFIXES = (WORKFLOW_SERVICE, "/temporal.api.operatorservice.v1.OperatorService/")
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
GET_CLUSTER_INFO = WORKFLOW_SERVICE + "GetClusterInfo"
LIST_NAMESPACES = WORKFLOW_SERVICE + "ListNamespaces"
DESCRIBE_NAMESPACE = WORKFLOW_SERVICE + "DescribeNamespace"
# Metadata the gRPC stack writes for each hop itself; everything else travels on unchanged.
HOP_METADATA = frozenset({"user-agent", "content-type", "te", "host", "grpc-timeout", "grpc-encoding",
                          "grpc-accept-encoding", "grpc-message-type"})
# Temporal's rich error details (e.g. WorkflowExecutionAlreadyStarted) ride in this trailer.
STATUS_DETAILS = "grpc-status-details-bin"
MAX_MESSAGE_BYTES = 128 * 1024 * 1024  # the frontend's own default ceiling


@dataclass(frozen=True)
class GateTLS:
    """The gate's server pair and the CA its callers' client certs must chain to (the client trust
    domain); the upstream roots, server name and client pair for the frontend."""

    server_cert: Path
    server_key: Path
    client_ca: Path
    upstream_ca: Path
    upstream_server_name: str
    upstream_cert: Path
    upstream_key: Path

    def server_credentials(self) -> grpc.ServerCredentials:
        pair = (self.server_key.read_bytes(), self.server_cert.read_bytes())
        return grpc.ssl_server_credentials([pair], root_certificates=self.client_ca.read_bytes(),
                                           require_client_auth=True)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.upstream_ca.read_bytes(), self.upstream_key.read_bytes(),
                                            self.upstream_cert.read_bytes())


class ClusterInfoFile:
    """The GetClusterInfoResponse the registration job recorded (protobuf JSON), re-read when it changes."""

    def __init__(self, path: Path):
        self.path = path
        self._stamp, self._answer = None, None

    def answer(self) -> bytes | None:
        from google.protobuf import json_format
        from temporalio.api.workflowservice.v1 import GetClusterInfoResponse

        try:
            stat = self.path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp != self._stamp:
                message = json_format.Parse(self.path.read_text(), GetClusterInfoResponse())
                self._answer, self._stamp = message.SerializeToString(), stamp
        except (OSError, ValueError, json_format.ParseError) as exc:
            log_event("gate-cluster-info-unreadable", path=str(self.path), error=clip(exc))
            return None
        return self._answer


def forwarded_metadata(metadata) -> tuple[tuple[str, str | bytes], ...]:
    return tuple((key, value) for key, value in metadata or ()
                 if not key.startswith(":") and key not in HOP_METADATA)


def returned_trailers(metadata) -> tuple[tuple[str, str | bytes], ...]:
    return tuple((key, value) for key, value in metadata or ()
                 if key == STATUS_DETAILS or not (key.startswith("grpc-") or key.startswith(":")))


def readable_namespaces(claims: dict, claim: str = PERMISSIONS_CLAIM) -> list[str]:
    """The namespaces a token grants read (or more) on by name; temporal-system grants are not
    namespaces, and a caller holding one gets the frontend's own answers anyway."""
    names = set()
    permissions = claims.get(claim)
    for permission in permissions if isinstance(permissions, list) else ():
        if isinstance(permission, str) and permission.count(":") == 1:
            namespace = permission.split(":")[0]
            if namespace and namespace != SYSTEM_NAMESPACE and role_for(claims, namespace, claim) >= ROLE_BITS["read"]:
                names.add(namespace)
    return sorted(names)


class Gate:
    def __init__(self, channel: grpc.aio.Channel, auth: Authenticator, cluster_info: ClusterInfoFile,
                 claim: str = PERMISSIONS_CLAIM):
        self.channel, self.auth, self.cluster_info, self.claim = channel, auth, cluster_info, claim
        self._calls: dict[str, grpc.aio.UnaryUnaryMultiCallable] = {}

    async def upstream(self, method: str, request: bytes, metadata, timeout: float | None) -> bytes:
        call = self._calls.get(method)
        if call is None:
            call = self._calls[method] = self.channel.unary_unary(method)  # bytes in, bytes out
        return await call(request, metadata=metadata, timeout=timeout)

    async def handle(self, method: str, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        metadata = forwarded_metadata(context.invocation_metadata())
        try:
            return await self.upstream(method, request, metadata, context.time_remaining())
        except grpc.aio.AioRpcError as refused:
            answer = None
            if refused.code() == grpc.StatusCode.PERMISSION_DENIED and method in (GET_CLUSTER_INFO, LIST_NAMESPACES):
                answer = await self.answer_for_namespace_user(method, metadata, context)
            if answer is not None:
                return answer
            await context.abort(refused.code(), refused.details() or "",
                                trailing_metadata=returned_trailers(refused.trailing_metadata()))

    async def answer_for_namespace_user(self, method: str, metadata, context) -> bytes | None:
        authorization = next((v for k, v in metadata if k == "authorization" and isinstance(v, str)), None)
        try:
            claims = await self.auth.claims(authorization)
        except Refusal as refusal:
            log_event("gate-refused", method=method.rsplit("/", 1)[1], reason=refusal.message, detail=refusal.detail)
            return None
        namespaces = readable_namespaces(claims, self.claim)
        if not namespaces:
            return None
        log_event("gate-answered", method=method.rsplit("/", 1)[1], sub=clip(claims.get("sub")),
                  namespaces=",".join(namespaces))
        if method == GET_CLUSTER_INFO:
            return self.cluster_info.answer()
        return await self.namespaces_described(namespaces, metadata, context.time_remaining())

    async def namespaces_described(self, namespaces: list[str], metadata, timeout: float | None) -> bytes:
        from temporalio.api.workflowservice.v1 import (
            DescribeNamespaceRequest,
            DescribeNamespaceResponse,
            ListNamespacesResponse,
        )

        async def describe(name: str) -> DescribeNamespaceResponse | None:
            request = DescribeNamespaceRequest(namespace=name).SerializeToString()
            try:
                return DescribeNamespaceResponse.FromString(await self.upstream(DESCRIBE_NAMESPACE, request, metadata, timeout))
            except grpc.aio.AioRpcError:
                return None  # gone, or the frontend does not let this caller read it

        described = await asyncio.gather(*(describe(name) for name in namespaces))
        return ListNamespacesResponse(namespaces=[d for d in described if d is not None]).SerializeToString()


class _Routes(grpc.GenericRpcHandler):
    def __init__(self, gate: Gate):
        self.gate = gate

    def service(self, details):
        method = details.method
        if not (method == HEALTH_CHECK or method.startswith(FORWARDED_PREFIXES)):
            return None  # UNIMPLEMENTED

        async def behaviour(request: bytes, context) -> bytes:
            return await self.gate.handle(method, request, context)

        return grpc.unary_unary_rpc_method_handler(behaviour)


MESSAGE_OPTIONS = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
# gRPC's default reconnect backoff grows to 120 s: after a server restart (make rotate, upgrade,
# or simply starting before the frontend) the UI would stay cut off that long. Retry after 0.25 s
# at first and never wait more than 2 s between attempts. (min_reconnect_backoff_ms is left alone:
# gRPC uses it as each attempt's connect timeout, and a loaded host may need seconds for TLS.)
RECONNECT_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 250), ("grpc.max_reconnect_backoff_ms", 2000)]


class RunningGate:
    def __init__(self, server: grpc.aio.Server, channel: grpc.aio.Channel, auth: Authenticator, port: int):
        self.server, self.channel, self.auth, self.port = server, channel, auth, port

    async def stop(self, grace: float = 1.0) -> None:
        await self.server.stop(grace)
        await self.channel.close()
        await self.auth.jwks.close()


async def start_gate(host: str, port: int, upstream: str, tls: GateTLS, auth: Authenticator,
                     cluster_info: Path, claim: str = PERMISSIONS_CLAIM,
                     max_concurrent_calls: int | None = None) -> RunningGate:
    """A started gate (port 0: any free port, see .port). Fails (OSError, RuntimeError) if the TLS
    files are unusable or the port cannot be bound."""
    channel = grpc.aio.secure_channel(upstream, tls.channel_credentials(), options=[
        ("grpc.ssl_target_name_override", tls.upstream_server_name), *MESSAGE_OPTIONS, *RECONNECT_OPTIONS])
    server = grpc.aio.server(options=MESSAGE_OPTIONS, maximum_concurrent_rpcs=max_concurrent_calls)
    server.add_generic_rpc_handlers((_Routes(Gate(channel, auth, ClusterInfoFile(cluster_info), claim)),))
    bound = server.add_secure_port(f"{host}:{port}", tls.server_credentials())
    if not bound:
        raise OSError(f"cannot listen on {host}:{port}")
    await server.start()
    return RunningGate(server, channel, auth, bound)
