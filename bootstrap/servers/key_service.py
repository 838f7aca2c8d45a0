"""The key service: a worker fetches the data keys of the namespaces it writes to, and only those,
from the codec server process, so a worker holds no key-encryption key and nothing that opens
another namespace's payloads.

    GET /v1/keys/{namespace}
        200 {"namespace": NS, "active": ID, "keys": {ID: base64 key}, "ttl": SECONDS}

The checks, all before any key is touched, are the codec's own (servers/auth.py, core/permissions):
  - mutual TLS: a client certificate the bundle's client CA verifies (the codec port asks for one
    and verifies it; browsers send none and are refused here only), else 401;
  - a bearer JWT verified like the codec's (JWKS, audience, issuer, exp), else 401;
  - write on the namespace itself (`<ns>:write` or `<ns>:admin`), else 403. Read is not enough:
    a reader decrypts nothing it could not ask the codec server to show it. A temporal-system
    grant counts only when `system_may_fetch` is set (default off): reading or administering the
    cluster is not being a custodian of every tenant's payloads.
Every request writes one audit line (events.audit, service "key-service": the outcome, status,
namespace, the token's principal, the certificate's subject, the peer, the number of keys served);
key bytes and tokens never reach a log. Replies carry Cache-Control: no-store.
"""

from __future__ import annotations

import base64
import re

from aiohttp import web

from ..core.permissions import ROLE_BITS, SYSTEM_NAMESPACE, permissions_of, split_permission
from ..errors import BundleError
from ..store import Layout
from .events import Refusal, audit, clip, log_event
from .http import reply

KEYS_ROUTE = "/v1/keys/{namespace}"
NAMESPACE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")  # as the codec accepts it
FETCH_ROLE = "write"
TTL_SECONDS = 60  # what a client may cache a ring for before asking again (it re-asks sooner on an unknown key id)


def may_fetch(claims: dict, namespace: str, claim: str, system_may_fetch: bool = False) -> bool:
    """Write on `namespace` itself; temporal-system's grants only if the policy says so."""
    needed, bits = ROLE_BITS[FETCH_ROLE], 0
    for scope, role in filter(None, map(split_permission, permissions_of(claims, claim))):
        if scope == namespace or (system_may_fetch and scope == SYSTEM_NAMESPACE):
            bits |= ROLE_BITS.get(role.lower(), 0)
    return bits >= needed


def peer_subject(request: web.BaseRequest) -> str | None:
    """The verified client certificate's subject CN, None without one."""
    transport = request.transport
    cert = transport.get_extra_info("peercert") if transport is not None else None
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return "(no common name)"


class KeyService:
    def __init__(self, keys, auth, claim: str, namespace_pattern, audit: bool = True, system_may_fetch: bool = False,
                 ttl: int = TTL_SECONDS):
        self.keys, self.auth, self.claim, self.namespace_pattern = keys, auth, claim, namespace_pattern
        self.audit, self.system_may_fetch, self.ttl = audit, system_may_fetch, ttl

    async def fetch(self, request: web.Request) -> web.StreamResponse:
        namespace = request.match_info.get("namespace", "")
        line = {"namespace": namespace, "remote": request.remote, "peer": clip(peer_subject(request))}
        try:
            ring = await self.admit(request, namespace, line)
        except Refusal as refusal:
            self.log(refusal.status, "refused", reason=refusal.message, detail=refusal.detail, **line)
            return reply(refusal.status, {"error": refusal.message}, {"Cache-Control": "no-store"}, close=request.body_exists)
        self.log(200, "served", keys=len(ring.keys), active=ring.active, **line)
        doc = {"namespace": namespace, "active": ring.active, "ttl": self.ttl,
               "keys": {key_id: base64.b64encode(key).decode() for key_id, key in ring.keys.items()}}
        return reply(200, doc, {"Cache-Control": "no-store"})

    async def admit(self, request: web.Request, namespace: str, line: dict):
        if line["peer"] is None:
            raise Refusal(401, "a client certificate of the bundle's client CA is required (mutual TLS)")
        claims = await self.auth.claims(request.headers.get("Authorization"))
        line["principal"] = self.auth.principal(claims)
        if not self.namespace_pattern.match(namespace):
            raise Refusal(400, "invalid namespace name")
        if not may_fetch(claims, namespace, self.claim, self.system_may_fetch):
            raise Refusal(403, f"data keys of namespace {namespace!r} need {FETCH_ROLE} on that namespace")
        try:
            keyset = self.keys.current()
        except BundleError as exc:
            log_event("keys-unavailable", error=str(exc))
            raise Refusal(503, "data keys unavailable") from None
        ring = getattr(keyset, "rings", {}).get(namespace)
        if ring is None:
            raise Refusal(404, f"no data keys for namespace {namespace!r}")
        return ring

    def log(self, status: int, outcome: str, **fields) -> None:
        if self.audit:
            fields.setdefault("principal", None)
            audit("key-service", "fetch", outcome, status, **fields)


def install(app: web.Application, keys, auth, policy, tls, audit: bool = True) -> KeyService:
    """The key service's route on the codec server's application (before its catch-all route),
    and its listener asking clients for a certificate of the bundle's client CA (trust/client/ca.pem
    beside the codec's certificate directory)."""
    service = KeyService(keys, auth, policy.claim, NAMESPACE, audit, getattr(policy, "system_may_fetch_keys", False))
    if tls is not None:
        client_ca = Layout(tls.cert.parent.parent).trust_files("client")[0]
        if client_ca.exists():
            tls.ask_client_certs(client_ca)
    app.router.add_route("GET", KEYS_ROUTE, service.fetch)
    return service
