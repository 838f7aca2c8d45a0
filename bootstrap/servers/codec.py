"""The codec server: Temporal's remote codec protocol over HTTPS, decrypting only for callers
whose token grants the payload's own namespace.

    POST .../decode   {"payloads": [{"metadata": {"encoding": "<b64>", ...}, "data": "<b64>"}]}
    POST .../encode   the same shape both ways (proto3 JSON of temporal.api.common.v1.Payloads)
    GET  /healthz     200 while the data keys and the JWKS load
    OPTIONS ...       CORS preflight, answered only for the configured Web UI origins

Only the last path segment selects the endpoint, so `https://codec:8888/{namespace}/decode` (the
CLI's endpoint templating) works too. The request's namespace comes from the X-Namespace header,
which the Web UI and the `temporal` CLI both send, else from the path segment before the endpoint.

Everything about the caller is decided before a byte of the body is read: the origin, the bearer
JWT (verified like Temporal's default claim mapper: kid in the JWKS, RS256/ES256, integer
exp/nbf/iat, audience, issuer), and the role. Temporal's role lattice decides, with the same bit
flags (worker=1 < read=2 < write=4 < admin=8, OR-ed over "<ns>:<role>" permissions, `have >=
required`, `temporal-system:<role>` counting for every namespace):
  - any request needs some role on the request's namespace, else 403;
  - encode needs write there, and binds the payloads to that namespace;
  - decode decrypts a payload only when it is bound to the request's namespace and the token
    holds `decrypt_role` (admin by default) there, with that namespace's own data keys; a payload
    bound to another namespace (copied into this history) is refused even for a system admin; a
    payload written before namespaces were bound is decrypted only for
    `temporal-system:<decrypt_role>`. Every other
    payload comes back unchanged, still encrypted (200), as if no codec were set, and the audit
    line says it was refused.
Then the body: Content-Length required (411), at most `max_body` (413), read within the body
deadline, while holding a share of a process-wide body budget; one token (issuer and subject) has
at most an eighth of the connections inside handlers at once, further requests get 429. Each request writes one JSON audit
line to stderr; tokens and payloads are never logged.
"""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from ..core.tokens import PERMISSIONS_CLAIM
from ..core.codec import ENCODING, KEY_ID_HEADER, NAMESPACE_HEADER, CodecError, KeyringFile, encrypt_all, open_sealed
from ..errors import BundleError
from .auth import SYSTEM_NAMESPACE, Authenticator, JWKSUnavailable, grants, key_sources, role_for
from .connections import CallerShare, caller_of
from .events import Refusal, audit, clip, log_event
from .http import Budget, Limits, cors_headers, cors_middleware
from .http import declared_length, read_body, refusal_reply, reply, stream_reply
from .key_service import install as install_key_service
from .service import ErrorReplies, Service
from .tls import ReloadingTLS
from .wire import b64, count_values, parse_items, parse_payloads, payload_json, render, render_payloads

ENCODE_ROLE = "write"
NAMESPACE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")
# The Web UI (2.58) also sends its ID token as Authorization-Extras: allowed so the browser's
# preflight passes, and ignored (only Authorization is checked).
ALLOW_HEADERS = "Authorization, Authorization-Extras, Content-Type, X-Namespace"
ALLOW_METHODS = "POST, OPTIONS"
# Any path whose last segment is encode or decode, trailing slashes allowed. aiohttp matches routes
# against the path with %2F still encoded (request.path has it decoded): a separator is either.
_SEP = "(?:/|%2F)"
CODEC_PATH = "/{prefix:(?:.*%s)?}{action:encode|decode}{slash:%s*}" % (_SEP, _SEP)
# Bodies up to this size and this many JSON values (a Web UI batch: a few payloads of about a
# dozen each) are handled on the event loop; the rest in a thread, so that the loop keeps answering
# while 64 KiB of "[]," (20k values) is parsed.
SMALL_BODY = 64 * 1024
SMALL_VALUES = 2048

# The memory the container has (compose: codec-server's mem_limit, SMALL_SERVICE_MEMORY, 256 MB)
# holds, at worst, all of this at once (measured by tests/codec/test_codec_memory_limit.py):
#   the process at rest (Python, aiohttp, protobuf, the SDK)              ~46 MB
#   MAX_CONNECTIONS x a connection's worst: TLS state, a waiting request
#     with a full head (connections.MAX_HEAD) and full read buffers, ~250 KB      ~64 MB
#   LARGE_BUDGET x a body's worst multiple (its bytes, the parsed JSON,
#     base64-decoded data, plaintext, the reply; wire.MAX_VALUES bounds
#     the parse), ~6.5x                                                   ~55 MB
#   SMALL_BUDGET x the same multiple                                       ~26 MB
#   total ~191 MB of 256: a quarter to spare for the allocator's fragmentation.
# The largest legitimate body: a Payloads field is at most Temporal's blob size limit
# (limit.blobSize.error, 2 MB by default) and fits a 4 MB gRPC message; base64 and JSON make
# 4 MB of payloads ~5.4 MiB of body.
MAX_BODY = 8 * 1024 * 1024
MAX_CONNECTIONS = 256
# Bytes of bodies in flight at once: large bodies take turns; small ones (the Web UI's) have a pool
# of their own and never wait behind them.
LARGE_BUDGET = MAX_BODY
SMALL_BUDGET = 4 * 1024 * 1024
LIMITS = Limits(max_connections=MAX_CONNECTIONS, max_body=MAX_BODY)


@dataclass(frozen=True)
class Policy:
    audience: str
    decrypt_role: str = "admin"
    ui_origins: tuple[str, ...] = ()
    issuers: tuple[str, ...] = ()
    claim: str = PERMISSIONS_CLAIM  # where tokens carry "<ns>:<role>" (the server's permissionsClaimName)
    login: object = None  # core.login_groups.LoginMapping: Dex users' groups -> permissions (oidc.groups)
    system_may_fetch_keys: bool = False  # codec.system_may_fetch_keys: temporal-system grants fetch data keys


@dataclass
class _Audit:
    """What one request's audit line says."""

    action: str
    remote: str | None
    enabled: bool = True
    namespace: str | None = None
    principal: str | None = None

    def write(self, status: int, outcome: str, **counts) -> None:
        if self.enabled:
            audit("codec", self.action, outcome, status, principal=self.principal, namespace=self.namespace,
                  remote=self.remote, **counts)


class CodecHandlers:
    def __init__(self, keys: KeyringFile, auth: Authenticator, policy: Policy, limits: Limits, audit: bool):
        self.keys, self.auth, self.policy, self.limits, self.audit = keys, auth, policy, limits, audit
        self.small, self.large = Budget(SMALL_BUDGET), Budget(LARGE_BUDGET)
        # One token's requests inside handlers: an eighth of the connections (32 of 256).
        self.callers = CallerShare(max(1, limits.max_connections // 8))
        # One thread: under the GIL a second one would only add switching; large bodies take turns anyway.
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="codec")

    # ---- the CORS preflight (any path) and health

    def preflight(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Origin") not in self.policy.ui_origins:
            return reply(403, {"error": "origin not allowed"})
        return web.Response(status=204, headers={
            "Access-Control-Allow-Methods": ALLOW_METHODS, "Access-Control-Allow-Headers": ALLOW_HEADERS,
            "Access-Control-Max-Age": "600"})

    async def health(self, request: web.Request) -> web.StreamResponse:
        try:
            self.keys.current()
            await self.auth.jwks.key_set()
        except (BundleError, JWKSUnavailable) as exc:
            log_event("health", status=503, error=str(exc))  # details here, never in the reply
            return reply(503, {"status": "unavailable"})
        if self.keys.error:
            log_event("health", status=503, error=self.keys.error)
            return reply(503, {"status": "degraded", "error": "data keys file unreadable; using the last good keys"})
        return reply(200, {"status": "ok"})

    # ---- one codec request

    async def codec(self, request: web.Request) -> web.StreamResponse:
        action = request.match_info["action"]
        audit = _Audit(action, request.remote, self.audit)
        try:
            claims = await self.admit(request, audit)
            length = declared_length(request, self.limits)
            budget = self.small if length <= SMALL_BODY else self.large
            with self.callers.hold(caller_of(claims)):
                async with budget.hold(length, self.limits.body_timeout):
                    body = await read_body(request, length, self.limits)
                    status, result, outcome, counts = await self.transform(action, claims, audit.namespace, body)
                    del body
                    audit.write(status, outcome, **counts)
                    return await stream_reply(request, result, cors_headers(request, self.policy.ui_origins))
        except Refusal as refusal:
            audit.write(refusal.status, "refused", reason=refusal.message, detail=refusal.detail)
            raise  # answered by the service's error middleware

    async def admit(self, request: web.Request, audit: _Audit) -> dict:
        """Origin, token and role; raises Refusal. Nothing of the body has been read yet."""
        origin = request.headers.get("Origin")
        if origin is not None and origin not in self.policy.ui_origins:
            raise Refusal(403, "origin not allowed")
        claims = await self.auth.claims(request.headers.get("Authorization"))
        audit.principal = self.auth.principal(claims)
        audit.namespace = namespace = self.namespace(request)
        if role_for(claims, namespace, self.policy.claim) == 0:
            raise Refusal(403, f"no role on namespace {namespace!r}")
        if audit.action == "encode" and not grants(claims, namespace, ENCODE_ROLE, self.policy.claim):
            raise Refusal(403, f"encode needs at least {ENCODE_ROLE} on namespace {namespace!r}")
        return claims

    def namespace(self, request: web.Request) -> str:
        namespace = request.headers.get("X-Namespace")
        if namespace is None:
            parts = [p for p in request.path.split("/") if p]
            namespace = parts[-2] if len(parts) >= 2 else ""
        if not NAMESPACE.match(namespace):
            raise Refusal(400, "missing or invalid X-Namespace header")
        return namespace

    async def transform(self, action: str, claims: dict, namespace: str, body: bytes):
        work = self.encode if action == "encode" else self.decode
        if len(body) <= SMALL_BODY and count_values(body) <= SMALL_VALUES:
            return work(claims, namespace, body)
        return await asyncio.get_running_loop().run_in_executor(self.pool, work, claims, namespace, body)

    # ---- the codec itself (run on the loop or in the pool)

    def keyring(self):
        try:
            return self.keys.current()
        except BundleError as exc:
            log_event("keys-unavailable", error=str(exc))
            raise Refusal(503, "data keys unavailable") from None

    def encode(self, claims: dict, namespace: str, body: bytes):
        payloads, keyring = parse_payloads(body), self.keyring()
        try:
            result = encrypt_all(payloads, keyring, namespace)
        except BundleError as exc:  # CodecError, or a namespace with no data keys of its own
            raise Refusal(400, clip(str(exc))) from None
        return 200, render_payloads(result), "encrypted", {"payloads": len(result)}

    def decode(self, claims: dict, namespace: str, body: bytes):
        items = parse_items(body)
        keyring, parts, decrypted, refused = self.keyring(), [], 0, {}
        may_read = _memo(lambda bound: grants(claims, bound or SYSTEM_NAMESPACE, self.policy.decrypt_role, self.policy.claim))
        for item in items:
            try:
                if item.field("encoding") != ENCODING:
                    item.check()
                    parts.append(item.json())
                    continue
                bound = _text(item.field(NAMESPACE_HEADER))
                # A payload bound to another namespace was copied here: refused whoever asks, and
                # it would not open anyway (its key is in its own namespace's ring only).
                if (bound is None or bound == namespace) and may_read(bound):
                    parts.append(payload_json(self.open(keyring, item, bound)))
                    decrypted += 1
                    continue
            except CodecError as exc:
                raise Refusal(400, clip(str(exc))) from None
            item.check()
            parts.append(item.json())
            scope = bound if bound is not None else "unbound (needs temporal-system)"
            if bound is not None and bound != namespace:
                scope = f"{bound} (bound to another namespace)"
            refused[scope] = refused.get(scope, 0) + 1
        outcome = "refused" if refused and not decrypted else "partly refused" if refused else "decrypted"
        counts = {"decrypted": decrypted, "refused": sum(refused.values()) or None,
                  "refused_namespaces": sorted(clip(ns) for ns in refused) or None, "payloads": len(parts)}
        return 200, render(parts), outcome, counts

    @staticmethod
    def open(keyring, item, bound: str | None):
        key_id = item.field(KEY_ID_HEADER)
        if key_id is None:
            raise CodecError(f"encrypted payload has no {KEY_ID_HEADER} metadata")
        return open_sealed(keyring, key_id.decode(errors="replace"), bound, b64(item.data))


def _text(raw: bytes | None) -> str | None:
    try:
        return None if raw is None else raw.decode()
    except UnicodeDecodeError:
        raise CodecError(f"encrypted payload has an undecodable {NAMESPACE_HEADER}") from None


def _memo(decide):
    """decide(namespace), computed once per namespace of a request: the role check is not free."""
    seen = {}

    def cached(namespace):
        if namespace not in seen:
            seen[namespace] = decide(namespace)
        return seen[namespace]

    return cached


def _not_found() -> web.Response:
    return reply(404, {"error": "not found"})


def _not_allowed(path: str, allowed: set[str]) -> web.Response:
    if path == "/healthz":  # GET only, and any other method there a 404, as it has always been
        return _not_found()
    methods = sorted(allowed)  # OPTIONS, the preflight, is answered on every path
    return reply(405, {"error": "use " + " or ".join(methods)}, {"Allow": ", ".join([*methods, "OPTIONS"])})


REPLIES = ErrorReplies(_not_found, _not_allowed, refusal_reply)


def make_server(
    host: str,
    port: int,
    *,
    keys_path: Path,
    policy: Policy,
    kek=None,
    jwks_path: Path | None = None,
    jwks_urls: tuple[str, ...] = (),
    jwks_cafile: Path | tuple[Path, ...] | None = None,
    cert: Path | None = None,
    key: Path | None = None,
    audit: bool = True,
    limits: Limits = LIMITS,
) -> Service:
    """Fails at start (BundleError, OSError, ssl.SSLError) if the keys or the cert are unusable."""
    keys = KeyringFile(keys_path, kek)
    keys.current()
    jwks = key_sources(jwks_path, jwks_urls, jwks_cafile)
    tls = ReloadingTLS(cert, key) if cert and key else None
    handlers = CodecHandlers(keys, Authenticator(jwks, policy.audience, policy.issuers, login=policy.login), policy, limits, audit)
    app = web.Application(middlewares=[cors_middleware(policy.ui_origins, handlers.preflight)],
                          client_max_size=limits.max_body)
    app.router.add_route("GET", "/healthz", handlers.health)
    app.router.add_route("POST", CODEC_PATH, handlers.codec)
    install_key_service(app, keys, handlers.auth, policy, tls, audit)
    app.on_cleanup.append(lambda _app: jwks.close())
    service = Service(app, host, port, tls, limits, REPLIES)
    service.jwks = jwks
    return service
