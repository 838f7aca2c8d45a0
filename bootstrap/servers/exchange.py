"""The token exchange (RFC 8693): a workload's own identity token in, a short-lived Temporal token out.

    POST /token   application/x-www-form-urlencoded
                  grant_type=urn:ietf:params:oauth:grant-type:token-exchange
                  subject_token=<the pod's projected service-account token>
                  subject_token_type=urn:ietf:params:oauth:token-type:jwt
                  [audience=<jwt.audience>] [requested_token_type=...:jwt or ...:access_token]
         200      {"access_token", "issued_token_type", "token_type": "Bearer", "expires_in"}
         4xx/5xx  {"error", "error_description"} (RFC 6749 section 5.2)
    GET /healthz  200 while the exchange key loads

The subject token's issuer must be configured in workload_identity.issuers; its keys come from the
issuer's OIDC discovery document (jwks_uri), the way kube-apiserver publishes them, fetched over
https with the issuer's CA and refetched for an unknown kid. Unverified, expired, foreign or unbound
tokens are answered `invalid_request`, as RFC 8693 section 2.2.2 asks. One JSON audit line per
request names the identity and what it was granted; tokens are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.parse
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import jwt
from aiohttp import web

from ..errors import BundleError
from ..core.tokens import SigningKey
from ..core.login_groups import LoginPolicy, login_permissions, login_principal, login_token, unmapped_reason
from ..core.watched import WatchedFile
from ..core.workload_identity import (ACCESS_TOKEN_TYPE, GRANT_TYPE, ISSUED_TOKEN_TYPE, JWT_TOKEN_TYPE, Refused,
                                 WorkloadIdentityConfig, WorkloadIssuer, exchanged_token, permissions_for,
                                 review_accepts, token_review_request, verify_subject)
from .auth import JWKSUnavailable, URLJWKS
from .events import Refusal, audit, clip, log_event
from .fetch import FetchError, FetchLimits, JSONFetcher
from .http import Limits, declared_length, read_body
from .service import ErrorReplies, Service
from .tls import ReloadingTLS

TOKEN_PATH = "/token"
MAX_FORM = 16 * 1024  # a service-account token is ~1 KiB; nothing legitimate comes near this
FORM_TYPE = "application/x-www-form-urlencoded"


@dataclass(frozen=True)
class ExchangePolicy:
    workload: WorkloadIdentityConfig
    namespaces: tuple[str, ...]  # configured Temporal namespaces
    issuer: str  # jwt.issuer and jwt.audience of the tokens we hand out
    audience: str
    login: LoginPolicy | None = None


class OAuthError(Refusal):
    def __init__(self, status: int, error: str, description: str):
        super().__init__(status, description)
        self.error = error


def oauth_reply(status: int, doc: dict) -> web.Response:
    # RFC 6749 5.1: tokens and errors are never cached.
    return web.Response(status=status, body=json.dumps(doc).encode() + b"\n", content_type="application/json",
                        headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


# --------------------------------------------------------------------------- issuer keys


class IssuerKeys:
    """An issuer's JWKS found through its OIDC discovery document. The document's `issuer` must be
    the configured one (OpenID Connect Discovery 4.3); its jwks_uri is used unless the config names
    one (kube-apiserver advertises an external address a pod may not reach). Both documents come
    through one fetcher: the issuer's CA, its bearer token, servers/fetch.py's limits."""

    def __init__(self, issuer: WorkloadIssuer, limits: FetchLimits = FetchLimits()):
        self.issuer = issuer
        cafile = Path(issuer.ca_file) if issuer.ca_file else None
        token_file = Path(issuer.auth_token_file) if issuer.auth_token_file else None
        self.fetcher = JSONFetcher(cafile, token_file, limits)
        self._jwks: URLJWKS | None = self._keys_at(issuer.jwks_uri) if issuer.jwks_uri else None
        self._discovery: asyncio.Future | None = None
        self._discovery_failed_at, self._discovery_error = float("-inf"), ""

    def _keys_at(self, jwks_uri: str) -> URLJWKS:
        return URLJWKS(jwks_uri, self.fetcher.cafiles, token_file=self.fetcher.token_file, fetcher=self.fetcher)

    async def key_set(self, kid: str) -> dict:
        if self._jwks is None:
            if self._discovery is None:
                if time.monotonic() - self._discovery_failed_at < 5.0:
                    raise JWKSUnavailable(f"{self.issuer.discovery}: discovery failed recently")
                self._discovery = asyncio.ensure_future(self._discover())
            await asyncio.shield(self._discovery)  # every request waiting for discovery shares one fetch
            if self._jwks is None:
                raise JWKSUnavailable(f"{self.issuer.discovery}: {self._discovery_error}")
        return await self._jwks.key_set(kid)

    async def _discover(self) -> None:
        try:
            self._jwks = self._keys_at(self._jwks_uri(await self.fetcher.get(self.issuer.discovery)))
        except FetchError as exc:
            self._discovery_failed_at, self._discovery_error = time.monotonic(), str(exc)
        finally:
            self._discovery = None

    def _jwks_uri(self, doc: dict) -> str:
        if doc.get("issuer") != self.issuer.issuer:
            raise FetchError(f"discovery document names issuer {clip(doc.get('issuer'))!r}")
        uri = doc.get("jwks_uri")
        if not isinstance(uri, str) or not uri.startswith("https://"):
            raise FetchError("discovery document has no https jwks_uri")
        return uri

    async def close(self) -> None:
        if self._discovery is not None:
            self._discovery.cancel()
        if self._jwks is not None:
            await self._jwks.close()
        await self.fetcher.close()


# --------------------------------------------------------------------------- the signing key


class ReloadingKey:
    """exchange/signing.key, re-read when it changes (`rotate --kind exchange-key` swaps it with an
    atomic rename): every token is signed with the key on disk, no restart. A file that does not
    load keeps the last good key, as the TLS pair does."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._file = WatchedFile(self.path, lambda p: SigningKey.from_pem(p.read_bytes(), str(p)))
        self.current()  # fail at start, not on the first exchange

    def current(self) -> SigningKey:
        previous = self._file.last
        try:
            key = self._file.current()
        except (OSError, BundleError) as exc:
            if previous is None:
                raise
            log_event("signing-key-unusable", error=clip(str(exc)), kept=previous.kid)
            return previous
        if previous is not None and key.kid != previous.kid:
            log_event("signing-key-reloaded", kid=key.kid, previous=previous.kid)
        return key


# --------------------------------------------------------------------------- the exchange


class Exchange:
    def __init__(self, policy: ExchangePolicy, key: ReloadingKey, limits: Limits):
        self.policy, self.signing, self.limits = policy, key, limits
        issuers = (*policy.workload.issuers, *((policy.login.issuer,) if policy.login else ()))
        self.keys = {i.issuer: IssuerKeys(i) for i in issuers}
        self.guard = None  # the listener's connection guard, once the service has one
        self._waiting, self.max_waiting = 0, max(1, limits.max_connections // 4)

    @property
    def key(self) -> SigningKey:
        return self.signing.current()

    async def health(self, request: web.Request) -> web.StreamResponse:
        return oauth_reply(200, {"status": "ok", "kid": self.key.kid})

    async def exchange(self, request: web.Request) -> web.StreamResponse:
        audit: dict = {"remote": request.remote}
        try:
            form = await self._form(request)
            doc = await self._grant(form, audit)
        except OAuthError as refusal:
            self._audit("refused", refusal.status, audit, error=refusal.error, reason=clip(refusal.message))
            raise  # answered by the service's error middleware
        self._audit("issued", 200, audit, expires_in=doc["expires_in"])
        return oauth_reply(200, doc)

    @staticmethod
    def _audit(outcome: str, status: int, fields: dict, **detail) -> None:
        """principal: the `sub` of the token issued (or that would have been), which history stamps."""
        fields = dict(fields)
        audit("token-exchange", "exchange", outcome, status, principal=fields.pop("principal", None), **fields, **detail)

    async def _form(self, request: web.Request) -> dict[str, str]:
        if request.content_type != FORM_TYPE:
            raise OAuthError(400, "invalid_request", f"Content-Type must be {FORM_TYPE}")
        try:
            length = declared_length(request, self.limits)  # limits.max_body is MAX_FORM
            with self._evictable(request):
                body = await read_body(request, length, self.limits)
        except Refusal as refusal:
            raise OAuthError(refusal.status, "invalid_request", refusal.message) from None
        try:
            pairs = urllib.parse.parse_qsl(body.decode("ascii"), strict_parsing=True, max_num_fields=16)
        except (ValueError, UnicodeDecodeError):
            raise OAuthError(400, "invalid_request", "body is not a form") from None
        names = [name for name, _ in pairs]
        if len(set(names)) != len(names):  # RFC 6749 3.2: parameters must not repeat
            raise OAuthError(400, "invalid_request", "a parameter is repeated")
        return dict(pairs)

    async def _issuer_keys(self, issuer: WorkloadIssuer, kid: str) -> dict:
        """A request waiting for an issuer's keys holds its connection slot (it is inside the handler):
        at most a quarter of the slots may wait, the rest stay free for requests whose keys are known
        (a key set in hand answers without suspending, so only real waits count)."""
        with self._waiting_slot(JWKSUnavailable(f"{self._waiting} requests already wait for issuer keys")):
            return await self.keys[issuer.issuer].key_set(kid)

    @contextlib.contextmanager
    def _waiting_slot(self, when_full: Exception):
        """One of the quarter of the slots that may wait on another server (issuer keys, TokenReview)."""
        if self._waiting >= self.max_waiting:
            raise when_full
        self._waiting += 1
        try:
            yield
        finally:
            self._waiting -= 1

    @contextlib.contextmanager
    def _evictable(self, request: web.Request):
        """While a body trickles in, its connection is evictable like an idle one: a thousand
        connections that never finish their forms must not hold every slot (the guard refuses new
        connections when none is idle). An evicted body ends in read_body's 408."""
        if self.guard is not None:
            self.guard.set_busy(request, False)
        try:
            yield
        finally:
            if self.guard is not None:
                self.guard.set_busy(request, True)

    async def _grant(self, form: dict[str, str], audit: dict) -> dict:
        if form.get("grant_type") != GRANT_TYPE:
            raise OAuthError(400, "unsupported_grant_type", f"grant_type must be {GRANT_TYPE}")
        subject = form.get("subject_token")
        if not subject:
            raise OAuthError(400, "invalid_request", "subject_token is required")
        if form.get("subject_token_type") != JWT_TOKEN_TYPE:
            raise OAuthError(400, "invalid_request", f"subject_token_type must be {JWT_TOKEN_TYPE}")
        if form.get("requested_token_type", JWT_TOKEN_TYPE) not in (JWT_TOKEN_TYPE, ACCESS_TOKEN_TYPE):
            raise OAuthError(400, "invalid_request", "requested_token_type must be a JWT access token")
        if form.get("audience", self.policy.audience) != self.policy.audience:
            raise OAuthError(400, "invalid_target", f"this exchange issues tokens for audience {self.policy.audience!r} only")
        identity = await self._identity(subject, audit)
        if self.policy.login is not None and identity.issuer is self.policy.login.issuer:
            return self._login_grant(identity, audit)
        granted = permissions_for(self.policy.workload, identity, self.policy.namespaces)
        if not granted:
            raise OAuthError(400, "invalid_request", "no binding in workload_identity grants this identity anything")
        audit["permissions"] = list(granted)
        now = datetime.now(timezone.utc)
        try:
            token = exchanged_token(self.key, identity, granted, issuer=self.policy.issuer, audience=self.policy.audience,
                                    lifetime=self.policy.workload.token_lifetime, now=now)
        except Refused as exc:
            raise OAuthError(400, "invalid_request", str(exc)) from None
        return {"access_token": token.encoded, "issued_token_type": ISSUED_TOKEN_TYPE, "token_type": "Bearer",
                "expires_in": token.claims["exp"] - token.claims["iat"]}

    def _login_grant(self, identity, audit: dict) -> dict:
        """A person's login token: the groups mapped through oidc.groups, `sub` the person."""
        login = self.policy.login
        audit["principal"] = login_principal(identity.claims, login.oidc)
        granted = login_permissions(identity.claims, login.oidc)
        if not granted:
            raise OAuthError(400, "invalid_request", unmapped_reason(identity.claims, login.oidc.login_groups_claim))
        audit["permissions"] = list(granted)
        token = login_token(self.key, identity.claims, granted, issuer=self.policy.issuer, audience=self.policy.audience,
                            lifetime=login.lifetime, now=datetime.now(timezone.utc), subject=audit["principal"])
        if token is None:
            raise OAuthError(400, "invalid_request", "subject token rejected: expired")
        return {"access_token": token.encoded, "issued_token_type": ISSUED_TOKEN_TYPE, "token_type": "Bearer",
                "expires_in": token.claims["exp"] - token.claims["iat"]}

    def _issuer_for(self, iss):
        login = self.policy.login
        if login is not None and iss == login.issuer.issuer:
            return login.issuer
        return self.policy.workload.issuer_for(iss)

    async def _identity(self, subject: str, audit: dict):
        iss, kid = _unverified_iss_and_kid(subject)
        issuer = self._issuer_for(iss)
        audit["iss"] = clip(iss if isinstance(iss, str) else None)
        if issuer is None:
            raise OAuthError(400, "invalid_request", "subject_token is from an issuer this exchange does not trust")
        if not isinstance(kid, str):
            raise OAuthError(400, "invalid_request", 'subject_token has no "kid" header')
        try:
            key_set = await self._issuer_keys(issuer, kid)
        except JWKSUnavailable as exc:
            log_event("issuer-keys-unavailable", issuer=issuer.name, error=clip(exc))
            raise OAuthError(503, "temporarily_unavailable", "the issuer's keys are unavailable") from None
        try:
            identity = verify_subject(subject, issuer, key_set)
        except Refused as exc:
            raise OAuthError(400, "invalid_request", clip(str(exc))) from None
        audit.update(issuer=issuer.name, subject=clip(identity.subject), pod=clip(identity.pod) or None,
                     principal=f"{issuer.name}:{identity.subject}")
        if issuer.reviews_tokens:
            await self._review(issuer, subject, identity.subject)
        return identity

    async def _review(self, issuer: WorkloadIssuer, subject: str, username: str) -> None:
        """Ask the API server whether the token still stands: its signature and expiry are checked
        here already, but a deleted pod's token stays valid for its lifetime otherwise. Waits for
        the API like a wait for issuer keys (same quarter of the slots); fails closed."""
        try:
            with self._waiting_slot(OAuthError(503, "temporarily_unavailable", "too many requests wait for the cluster")):
                doc = await self.keys[issuer.issuer].fetcher.post(issuer.token_review_endpoint,
                                                                  token_review_request(subject, issuer.audience))
        except FetchError as exc:
            log_event("token-review-failed", issuer=issuer.name, error=clip(exc))
            raise OAuthError(503, "temporarily_unavailable", "the cluster's TokenReview is unavailable") from None
        if not review_accepts(doc, username):
            raise OAuthError(400, "invalid_request",
                             "the cluster no longer accepts this token (its pod or service account is gone)")

    async def close(self) -> None:
        for keys in self.keys.values():
            await keys.close()


def _unverified_iss_and_kid(subject: str) -> tuple:
    """Only these two values outlive the parse: a request may wait for its issuer's keys, and a
    16 KiB token of nested arrays parses to ~20 times its size."""
    try:
        return (jwt.decode(subject, options={"verify_signature": False}).get("iss"),
                jwt.get_unverified_header(subject).get("kid"))
    except jwt.PyJWTError:
        raise OAuthError(400, "invalid_request", "subject_token is not a JWT") from None


def _not_found() -> web.Response:
    return oauth_reply(404, {"error": "not_found"})


def _not_allowed(path: str, allowed: set[str]) -> web.Response:
    if path != TOKEN_PATH:  # /healthz is GET only, and any other method there a 404, as it has always been
        return _not_found()
    response = oauth_reply(405, {"error": "invalid_request", "error_description": "use POST"})
    response.headers["Allow"] = "POST"
    return response


def _refused(refusal: Refusal) -> web.Response:
    error = refusal.error if isinstance(refusal, OAuthError) else "invalid_request"
    return oauth_reply(refusal.status, {"error": error, "error_description": refusal.message})


REPLIES = ErrorReplies(_not_found, _not_allowed, _refused)


def make_server(host: str, port: int, *, policy: ExchangePolicy, key_file: Path, cert: Path | None, tls_key: Path | None,
                limits: Limits = Limits()) -> Service:
    """Fails at start (OSError, ssl.SSLError, BundleError) if the address, the certificate or the
    signing key is unusable."""
    limits = Limits(limits.max_connections, limits.header_timeout, min(limits.body_timeout, 10.0), MAX_FORM)
    exchange = Exchange(policy, ReloadingKey(key_file), limits)
    tls = ReloadingTLS(cert, tls_key) if cert and tls_key else None
    app = web.Application(client_max_size=MAX_FORM)
    app.router.add_route("GET", "/healthz", exchange.health)
    app.router.add_route("POST", TOKEN_PATH, exchange.exchange)
    app.on_cleanup.append(lambda _app: exchange.close())
    service = Service(app, host, port, tls, limits, REPLIES)
    service.exchange, exchange.guard = exchange, service.guard
    return service
