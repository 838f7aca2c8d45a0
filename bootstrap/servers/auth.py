"""Who may use the codec: the JWKS sources tokens are verified against and the token check (Temporal's
role lattice is core.permissions).

JWKS fetches never hold a lock: the event loop runs one fetch per source at a time (later callers
wait for that one), a token whose kid is already known is verified against the cached set while a
fetch for an unknown kid is in flight, and failed fetches back off (1 s doubling to 60 s).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

import jwt

# The role model lives in core.permissions; re-exported for the servers and tests that import it from here.
from ..core.permissions import ROLE_BITS, SYSTEM_NAMESPACE, grants, role_for  # noqa: F401
from ..core.tokens import verify_token
from ..errors import BundleError
from .events import Refusal, clip, log_event

if TYPE_CHECKING:
    from .fetch import FetchLimits, JSONFetcher


class JWKSUnavailable(Exception):
    pass


# --------------------------------------------------------------------------- key sources


def _kids(doc: dict | None) -> set:
    return {k["kid"] for k in (doc or {}).get("keys", []) if isinstance(k, dict) and isinstance(k.get("kid"), str)}


class FileJWKS:
    """The bundle's jwks.json, re-read when it changes."""

    def __init__(self, path: Path):
        from .jwks import JWKSSource  # the JWKS server's module: aiohttp, which the gate does without

        self.source, self.description = JWKSSource(path), str(path)
        self._raw, self._doc = None, None

    async def key_set(self, kid: str | None = None) -> dict:
        try:
            raw = self.source.current()
            if raw is not self._raw:
                self._doc, self._raw = json.loads(raw), raw
        except (OSError, ValueError) as exc:
            raise JWKSUnavailable(f"{self.description}: {exc}") from None
        return self._doc

    async def close(self) -> None:
        pass


class URLJWKS:
    """A JWKS URL, fetched every `ttl` seconds, and again (at most every `unknown_every` seconds)
    for an unknown kid, through servers/fetch.py (https verified against the system CAs plus
    `cafile`, re-read for each fetch). A stale set keeps serving while its refresh runs, and after
    a refresh fails."""

    def __init__(self, url: str, cafile: Path | tuple[Path, ...] | None, ttl: float = 60.0,
                 unknown_every: float = 5.0, token_file: Path | None = None, limits: FetchLimits | None = None,
                 fetcher: JSONFetcher | None = None):
        self.url, self.cafile, self.ttl, self.description = url, cafile, ttl, url
        self.token_file = token_file  # a bearer token for the fetch, re-read each time (kube-apiserver's JWKS wants one)
        self.unknown_every, self.limits, self._fetcher = unknown_every, limits, fetcher
        self._doc, self._fetched, self._attempted, self._failures = None, 0.0, float("-inf"), 0
        self._fetch_task: asyncio.Task | None = None

    async def key_set(self, kid: str | None = None) -> dict:
        now = time.monotonic()
        if self._doc is not None and (kid is None or kid in _kids(self._doc)):
            if now - self._fetched >= self.ttl and self._may_fetch(now, self.unknown_every):
                self._start_fetch()  # refresh in the background; this caller keeps the cached set
            return self._doc
        if self._fetch_task is None and self._may_fetch(now, self.unknown_every if self._doc else 0):
            self._start_fetch()
        if self._fetch_task is not None:
            await asyncio.shield(self._fetch_task)
        if self._doc is None:
            raise JWKSUnavailable(f"{self.url}: no key set fetched yet")
        return self._doc

    def _may_fetch(self, now: float, floor: float) -> bool:
        backoff = min(60.0, 2.0 ** (self._failures - 1)) if self._failures else 0.0
        return self._fetch_task is None and now - self._attempted >= max(floor, backoff)

    def _start_fetch(self) -> None:
        self._attempted = time.monotonic()
        self._fetch_task = asyncio.ensure_future(self._refresh())

    async def _refresh(self) -> None:
        from .fetch import FetchError  # first fetch only: the gate starts without the HTTP stack

        try:
            self._doc, self._fetched, self._failures = await self._fetch(), time.monotonic(), 0
        except FetchError as exc:
            self._failures += 1
            log_event("jwks-fetch-failed", url=self.url, failures=self._failures, error=clip(str(exc)))
        finally:
            self._fetch_task = None

    async def _fetch(self) -> dict:
        from .fetch import FetchLimits, JSONFetcher

        self._fetcher = self._fetcher or JSONFetcher(self.cafile, self.token_file, self.limits or FetchLimits())
        return jwks_of(await self._fetcher.get(self.url))

    async def close(self) -> None:
        if self._fetch_task is not None:
            self._fetch_task.cancel()
        if self._fetcher is not None:
            await self._fetcher.close()


def jwks_of(doc: dict) -> dict:
    """A fetched JWKS with only the keys a token could name: objects with a string kid."""
    from .fetch import FetchError

    if not isinstance(doc.get("keys"), list):
        raise FetchError("not a JWKS document (no keys array)")
    return {**doc, "keys": [k for k in doc["keys"] if isinstance(k, dict) and isinstance(k.get("kid"), str)]}


class CombinedJWKS:
    """Several JWKS URLs as one key set: the bundle's own (for CLI users with bundle tokens) and an
    OIDC provider's (for Web UI users, whose access token the UI passes on). A slow or broken
    source does not hold up tokens another source already knows."""

    def __init__(self, sources: list):
        self.sources = sources
        self.description = ", ".join(s.description for s in sources)

    async def key_set(self, kid: str | None = None) -> dict:
        results = await asyncio.gather(*(s.key_set(kid) for s in self._asked(kid)), return_exceptions=True)
        docs = [r for r in results if isinstance(r, dict)]
        if not docs:
            raise JWKSUnavailable("; ".join(str(r) for r in results))
        return {"keys": [k for doc in docs for k in doc.get("keys", [])]}

    def _asked(self, kid: str | None) -> list:
        known = [s for s in self.sources if kid is not None and kid in _kids(getattr(s, "_doc", None))]
        return known or self.sources

    async def close(self) -> None:
        for source in self.sources:
            await source.close()


def key_sources(jwks_path: Path | None, jwks_urls: tuple[str, ...], cafile: Path | tuple[Path, ...] | None):
    """JWKS URLs as one key set, or else the bundle's jwks.json."""
    if jwks_urls:
        return CombinedJWKS([URLJWKS(url, cafile) for url in jwks_urls])
    if jwks_path is not None:
        return FileJWKS(jwks_path)
    raise BundleError("a JWKS file or URL is needed to check tokens")


# --------------------------------------------------------------------------- token check


class Authenticator:
    """Bearer token -> verified claims, or a Refusal (401, or 503 when no key set is at hand).

    A verified token is remembered for `remember` seconds (never past its exp): the Web UI sends the
    same token for every payload it shows, and parsing and checking it costs more than decrypting.
    Temporal itself refreshes its key set only every jwt.refresh_interval, so a key withdrawn from
    the JWKS stops working here no later than there."""

    def __init__(self, jwks, audience: str, issuers: tuple[str, ...] = (), remember: float = 30.0,
                 capacity: int = 1024, login=None):
        self.jwks, self.audience, self.issuers = jwks, audience, issuers
        # A core.login_groups.LoginMapping: the login issuer's tokens carry the permissions
        # oidc.groups maps their groups to, in place of the groups themselves.
        self.login = login
        self.remember, self.capacity = remember, capacity
        self._verified: OrderedDict[str, tuple[dict, float]] = OrderedDict()

    def principal(self, claims: dict) -> str | None:
        """Who the claims name, as Temporal's history will: a person of the login issuer as the
        login mapping says (the exchanged token's user:<connector>:<user>), anyone else by `sub`."""
        if self.login is not None and self.login.applies(claims):
            return self.login.principal(claims)
        return claims.get("sub")

    async def claims(self, authorization: str | None) -> dict:
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Refusal(401, "missing bearer token")
        claims = self._recall(token)
        if claims is None:
            claims = await self._verify(token)
            self._keep(token, claims)
        return claims

    def _recall(self, token: str) -> dict | None:
        entry = self._verified.get(token)
        if entry is None:
            return None
        claims, until = entry
        if time.monotonic() >= until or time.time() >= claims["exp"]:
            del self._verified[token]
            return None
        self._verified.move_to_end(token)
        return claims

    def _keep(self, token: str, claims: dict) -> None:
        self._verified[token] = (claims, time.monotonic() + self.remember)
        while len(self._verified) > self.capacity:
            self._verified.popitem(last=False)

    async def _verify(self, token: str) -> dict:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as exc:
            raise Refusal(401, "invalid token", clip(exc)) from None
        if not isinstance(kid, str):
            raise Refusal(401, "invalid token", 'no "kid" header')
        try:
            key_set = await self.jwks.key_set(kid)
        except JWKSUnavailable as exc:
            raise Refusal(503, "token keys unavailable", clip(exc)) from None
        try:
            claims = verify_token(token, key_set, audience=self.audience, issuers=self.issuers)
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise Refusal(401, "invalid token", clip(exc)) from None
        return self.login.mapped(claims) if self.login is not None and self.login.applies(claims) else claims
