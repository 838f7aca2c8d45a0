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

Every caller holds a client-domain certificate, and every application role has one, so the gate's
memory is bounded by construction, not by trust (see GateBudget): messages are no larger than the
frontend accepts; a call's body is read only once its token verifies (the frontend refuses every
other call but the health check and GetSystemInfo, so the gate refuses it first, unread) and a
message slot is free; slots are as many as the container's memory holds at the worst case, and one
certificate holds at most half of them and an eighth of the calls, and one peer address a quarter
of the connections (front.py), so no single holder locks the UI out.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import grpc

from .auth import Authenticator
from .events import Refusal, audit, clip, log_event
from .front import Front, PeerShares, private_socket_path
from .gate_budget import BODY_SECONDS, PEER_CONNECTIONS, UPSTREAM_MESSAGE_OPTIONS, GateBudget
from ..core.permissions import SYSTEM_NAMESPACE, grants, permissions_of, split_permission
from ..core.tokens import PERMISSIONS_CLAIM
from ..core.watched import WatchedFile

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
GET_SYSTEM_INFO = WORKFLOW_SERVICE + "GetSystemInfo"
# What the frontend's authorizer lets through without a token (Check, GetSystemInfo): the SDK and
# the health check ask these first. The frontend refuses every other call without a valid token.
TOKENLESS_METHODS = frozenset({HEALTH_CHECK, GET_SYSTEM_INFO})


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
    """The GetClusterInfoResponse the registration job recorded (protobuf JSON), re-read when it
    changes. Anything else (unreadable, not that message, larger than MAX_BYTES) is logged and
    answers None: the caller then gets the frontend's own refusal."""

    MAX_BYTES = 64 * 1024  # the recorded answer is about 1 KiB

    def __init__(self, path: Path):
        self.path = path
        self._file = WatchedFile(path, self._parse)

    def _parse(self, path: Path) -> bytes:
        from google.protobuf import json_format
        from temporalio.api.workflowservice.v1 import GetClusterInfoResponse

        with path.open("rb") as handle:  # replaced, not rewritten, by its writer: one read
            recorded = handle.read(self.MAX_BYTES + 1)
        if len(recorded) > self.MAX_BYTES:
            raise ValueError(f"larger than {self.MAX_BYTES} bytes")
        return json_format.Parse(recorded.decode(), GetClusterInfoResponse()).SerializeToString()

    def answer(self) -> bytes | None:
        from google.protobuf import json_format

        try:
            return self._file.current()
        except (OSError, ValueError, json_format.ParseError) as exc:
            log_event("gate-cluster-info-unreadable", path=str(self.path), error=clip(exc))
            return None


def forwarded_metadata(metadata) -> tuple[tuple[str, str | bytes], ...]:
    return tuple((key, value) for key, value in metadata or ()
                 if not key.startswith(":") and key not in HOP_METADATA)


def returned_trailers(metadata) -> tuple[tuple[str, str | bytes], ...]:
    return tuple((key, value) for key, value in metadata or ()
                 if key == STATUS_DETAILS or not (key.startswith("grpc-") or key.startswith(":")))


def readable_namespaces(claims: dict, claim: str = PERMISSIONS_CLAIM) -> list[str]:
    """The namespaces a token grants read (or more) on by name; temporal-system grants are not
    namespaces, and a caller holding one gets the frontend's own answers anyway."""
    named = {parts[0] for parts in map(split_permission, permissions_of(claims, claim)) if parts}
    return sorted(ns for ns in named if ns and ns != SYSTEM_NAMESPACE and grants(claims, ns, "read", claim))


def bearer_of(metadata) -> str | None:
    return next((v for k, v in metadata if k == "authorization" and isinstance(v, str)), None)


def caller_of(context: grpc.aio.ServicerContext) -> bytes:
    """Who holds the call: the client certificate (every caller has one), else the peer address."""
    certificate = context.auth_context().get("x509_pem_cert")
    return certificate[0] if certificate else context.peer().encode()


def slot_wait(context: grpc.aio.ServicerContext) -> float:
    remaining = context.time_remaining()
    return 3 * BODY_SECONDS if remaining is None else max(0.0, min(remaining, 3 * BODY_SECONDS))


async def read_body(context: grpc.aio.ServicerContext) -> bytes:
    try:
        body = await asyncio.wait_for(context.read(), BODY_SECONDS)
    except asyncio.TimeoutError:
        await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"no request message within {BODY_SECONDS:.0f} s")
    if body is grpc.aio.EOF:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no request message")
    return body


async def send_answer(context: grpc.aio.ServicerContext, answer: bytes) -> None:
    """The answer, taken by the caller within BODY_SECONDS (a caller that never reads it frees its slot)."""
    try:
        await asyncio.wait_for(context.write(answer), BODY_SECONDS)
    except asyncio.TimeoutError:
        await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"the answer was not taken within {BODY_SECONDS:.0f} s")


class ThrottledLog:
    """One event line per second at most (with how many were left out): refusals come as fast as a
    certificate holder can open streams."""

    def __init__(self, event: str, every: float = 1.0):
        self.event, self.every = event, every
        self._last, self._left_out = float("-inf"), 0

    def log(self, **fields) -> None:
        now = time.monotonic()
        if now - self._last < self.every:
            self._left_out += 1
            return
        log_event(self.event, **fields, left_out=self._left_out or None)
        self._last, self._left_out = now, 0


class Admission:
    """Calls in flight and message slots, in all and per caller: a caller holds at most an eighth of
    the calls and half of the slots, so one certificate cannot lock the others (the UI) out."""

    def __init__(self, calls: int, slots: int):
        self.calls, self.caller_calls = calls, max(1, calls // 8)
        self.slots, self.caller_slots = asyncio.Semaphore(slots), max(1, slots // 2)
        self._in_flight = 0
        self._by_caller: Counter[bytes] = Counter()
        self._caller_semaphores: dict[bytes, asyncio.Semaphore] = {}

    def enter(self, caller: bytes) -> bool:
        if self._in_flight >= self.calls or self._by_caller[caller] >= self.caller_calls:
            return False
        self._in_flight += 1
        self._by_caller[caller] += 1
        return True

    def leave(self, caller: bytes) -> None:
        self._in_flight -= 1
        self._by_caller[caller] -= 1
        if not self._by_caller[caller]:
            del self._by_caller[caller]
            self._caller_semaphores.pop(caller, None)

    @contextlib.asynccontextmanager
    async def slot(self, caller: bytes, wait: float):
        """Yields whether a slot was had within `wait` seconds (and holds it for the block)."""
        mine = self._caller_semaphores.setdefault(caller, asyncio.Semaphore(self.caller_slots))
        held = []
        try:
            for semaphore in (mine, self.slots):
                await asyncio.wait_for(semaphore.acquire(), wait)
                held.append(semaphore)
        except asyncio.TimeoutError:
            pass
        try:
            yield len(held) == 2
        finally:
            for semaphore in held:
                semaphore.release()


def with_bearer(metadata, token: str) -> tuple:
    return tuple((k, f"Bearer {token}") if k == "authorization" else (k, v) for k, v in metadata)


class Gate:
    def __init__(self, channel: grpc.aio.Channel, auth: Authenticator, cluster_info: ClusterInfoFile,
                 admission: Admission, claim: str = PERMISSIONS_CLAIM, login=None):
        self.channel, self.auth, self.cluster_info, self.claim = channel, auth, cluster_info, claim
        # servers.login_exchange.LoginExchange: a person's Dex token is forwarded as the bundle
        # token the exchange gives for it (their groups mapped through oidc.groups); None: as is.
        self.login = login
        self.admission, self.refusals = admission, ThrottledLog("gate-refused")
        self._calls: dict[str, grpc.aio.UnaryUnaryMultiCallable] = {}

    async def upstream(self, method: str, request: bytes, metadata, timeout: float | None) -> bytes:
        call = self._calls.get(method)
        if call is None:
            call = self._calls[method] = self.channel.unary_unary(method)  # bytes in, bytes out
        return await call(request, metadata=metadata, timeout=timeout)

    async def call(self, method: str, context: grpc.aio.ServicerContext) -> None:
        """One call, admitted before its body is read: the caller's certificate within its share,
        its token valid (but for TOKENLESS_METHODS), a message slot free."""
        caller = caller_of(context)
        if not self.admission.enter(caller):
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many calls in flight")
        try:
            metadata = forwarded_metadata(context.invocation_metadata())
            if method not in TOKENLESS_METHODS:
                metadata = await self.authenticate(method, metadata, context)
            elif self.login is not None:  # the frontend answers these without a token, not with Dex's
                metadata = self.login.without_login_token(metadata)
            async with self.admission.slot(caller, slot_wait(context)) as held:
                if not held:
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "the gate is busy: try again")
                # The body is held by handle() alone, which lets go of it as soon as the frontend answered.
                answer = await self.handle(method, await read_body(context), metadata, context)
                await send_answer(context, answer)
        finally:
            self.admission.leave(caller)

    async def authenticate(self, method: str, metadata, context):
        """Refuse, unread, a call the frontend would refuse for its token (with the frontend's words);
        the metadata to forward, a login token exchanged for the person's bundle token."""
        authorization = bearer_of(metadata)
        try:
            claims = await self.auth.claims(authorization)
            if self.login is not None and self.login.applies(claims):
                if self.login.ending(claims):  # verified
                    raise Refusal(401, "login token ending")
                token = authorization.strip().partition(" ")[2].strip()
                return with_bearer(metadata, await self.login.bundle_token(token))
        except Refusal as refusal:
            self.refusals.log(method=method.rsplit("/", 1)[1], reason=refusal.message, detail=refusal.detail)
            if refusal.status == 503:
                await context.abort(grpc.StatusCode.UNAVAILABLE, refusal.message)
            if refusal.status == 403:  # logged in, but oidc.groups maps none of their groups: say so
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"Request unauthorized: {refusal.message}")
            if self.login is not None and self.login.ending(self.login.login_claims(authorization)):
                # The UI server answers UNAUTHENTICATED with 401, on which the UI refreshes the
                # person's token; PERMISSION_DENIED would show them "no permission" instead.
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "Request unauthenticated: the login token has "
                                    "expired or is about to: refresh it")
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "Request unauthorized.")
        return metadata

    async def handle(self, method: str, request: bytes, metadata, context: grpc.aio.ServicerContext) -> bytes:
        try:
            return await self.upstream(method, request, metadata, context.time_remaining())
        except grpc.aio.AioRpcError as exc:
            # grpc's failed call, its task and this error's traceback form a cycle that holds the
            # request (up to MAX_REQUEST_BYTES) until the cyclic GC runs: cut it, so the bytes go now.
            exc.__traceback__ = None
            code, details, trailers = exc.code(), exc.details() or "", returned_trailers(exc.trailing_metadata())
        del request
        if code == grpc.StatusCode.PERMISSION_DENIED and method in (GET_CLUSTER_INFO, LIST_NAMESPACES):
            answer = await self.answer_for_namespace_user(method, metadata, context)
            if answer is not None:
                return answer
        await context.abort(code, details, trailing_metadata=trailers)

    async def answer_for_namespace_user(self, method: str, metadata, context) -> bytes | None:
        try:
            claims = await self.auth.claims(bearer_of(metadata))
        except Refusal as refusal:
            audit("ui-gate", method.rsplit("/", 1)[1], "refused", refusal.status, principal=None, reason=refusal.message,
                  detail=refusal.detail)
            return None
        namespaces = readable_namespaces(claims, self.claim)
        if not namespaces:
            return None
        audit("ui-gate", method.rsplit("/", 1)[1], "answered", 200, principal=self.auth.principal(claims),
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

        async def behaviour(requests, context) -> None:
            await self.gate.call(method, context)

        # Streaming on our side (unary on the wire, as the frontend's): the gate runs as the call's
        # headers arrive, so it admits or refuses a call before its body is read.
        return grpc.stream_stream_rpc_method_handler(behaviour)


# gRPC's default reconnect backoff grows to 120 s: after a server restart (make rotate, upgrade,
# or simply starting before the frontend) the UI would stay cut off that long. Retry after 0.25 s
# at first and never wait more than 2 s between attempts. (min_reconnect_backoff_ms is left alone:
# gRPC uses it as each attempt's connect timeout, and a loaded host may need seconds for TLS.)
RECONNECT_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 250), ("grpc.max_reconnect_backoff_ms", 2000)]


class RunningGate:
    def __init__(self, server: grpc.aio.Server, front: Front, channel: grpc.aio.Channel, auth: Authenticator,
                 port: int, budget: GateBudget, gate: "Gate"):
        self.server, self.front, self.channel, self.auth, self.gate = server, front, channel, auth, gate
        self.port, self.budget = port, budget

    async def stop(self, grace: float = 1.0) -> None:
        self.front.stop()
        await self.server.stop(grace)
        await self.channel.close()
        await self.auth.jwks.close()
        if self.gate.login is not None:
            await self.gate.login.close()
        self.front.upstream.unlink(missing_ok=True)
        self.front.upstream.parent.rmdir()


async def start_gate(host: str, port: int, upstream: str, tls: GateTLS, auth: Authenticator,
                     cluster_info: Path, budget: GateBudget, claim: str = PERMISSIONS_CLAIM, login=None) -> RunningGate:
    """A started gate (port 0: any free port, see .port). Fails (OSError, RuntimeError) if the TLS
    files are unusable or the port cannot be bound, ValueError if the budget holds too little."""
    budget.checked()
    channel = grpc.aio.secure_channel(upstream, tls.channel_credentials(), options=[
        ("grpc.ssl_target_name_override", tls.upstream_server_name), *UPSTREAM_MESSAGE_OPTIONS, *RECONNECT_OPTIONS])
    server = grpc.aio.server(options=budget.server_options())
    gate = Gate(channel, auth, ClusterInfoFile(cluster_info), Admission(budget.calls, budget.slots), claim, login)
    server.add_generic_rpc_handlers((_Routes(gate),))
    relayed = private_socket_path()
    if not server.add_secure_port(f"unix:{relayed}", tls.server_credentials()):
        raise OSError(f"cannot listen on {relayed}")
    await server.start()
    front = Front(relayed, PeerShares(budget.connections, PEER_CONNECTIONS))
    try:
        bound = await front.start(host, port)
    except OSError:
        await server.stop(None)
        raise
    return RunningGate(server, front, channel, auth, bound, budget, gate)
