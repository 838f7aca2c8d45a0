"""The UI gate's side of the token exchange: a person's verified Dex token in, the short-lived bundle
token the exchange (servers/exchange.py, RFC 8693) mints for it out, with the permissions
oidc.groups maps the person's groups to and `sub` naming the person.

The gate holds no signing key: the exchange, which already signs workloads' tokens with a key used
for nothing else, is the one place a login becomes permissions. An exchanged token is kept (by the
Dex token it came from) until shortly before its exp, which is never past the Dex token's: one
exchange per person per few minutes, not per call; a refusal (no mapped group) is kept 10 s, so a
UI polling for such a person does not ask the exchange each time. Concurrent calls with the same
Dex token share one exchange. Tokens are never logged.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections import OrderedDict
from pathlib import Path

from .events import Refusal, clip

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"
MAX_ANSWER = 64 * 1024
MARGIN = 15.0  # seconds before its exp an exchanged token is exchanged again
REFUSED_FOR = 10.0  # seconds a refusal (no mapped group) is answered without asking again
# A login token with less than this left is not exchanged: the call would reach the exchange or the
# frontend after it expired and come back as "no permission"; the caller is told to refresh instead.
LAST_INSTANT = 5.0


class LoginExchange:
    def __init__(self, url: str, cafiles: tuple[Path, ...], login_issuer: str, audience: str,
                 capacity: int = 1024, timeout: float = 10.0):
        self.url, self.cafiles, self.login_issuer, self.audience = url, cafiles, login_issuer, audience
        self.capacity, self.timeout = capacity, timeout
        self._kept: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._pending: dict[str, asyncio.Future] = {}
        self._session = None

    def applies(self, claims: dict) -> bool:
        return claims.get("iss") == self.login_issuer

    def without_login_token(self, metadata) -> tuple:
        """The metadata of a call the frontend answers without a token (the health check,
        GetSystemInfo), less a Dex token it no longer verifies (it would refuse the call for it)."""
        return tuple((k, v) for k, v in metadata if not (k == "authorization" and self.login_claims(v) is not None))

    @staticmethod
    def ending(claims: dict | None) -> bool:
        """Whether these claims of a login token say it has expired or expires within LAST_INSTANT."""
        exp = claims.get("exp") if claims is not None else None
        return isinstance(exp, (int, float)) and exp - time.time() < LAST_INSTANT

    def login_claims(self, authorization) -> dict | None:
        """The claims of the login token in an authorization header, unverified (they only pick
        which refusal a caller gets, or which metadata is dropped); None for anything else."""
        import jwt

        try:
            token = str(authorization).strip().partition(" ")[2].strip()
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            return None
        return claims if claims.get("iss") == self.login_issuer else None

    async def bundle_token(self, token: str) -> str:
        """The exchanged token, or Refusal(403, the exchange's reason) / Refusal(503)."""
        kept = self._kept.get(token)
        if kept is not None:
            if time.time() < kept[1] - MARGIN:
                self._kept.move_to_end(token)
                if isinstance(kept[0], Refusal):  # refused lately: the UI polls, the answer holds
                    raise Refusal(kept[0].status, kept[0].message)
                return kept[0]
            del self._kept[token]
        pending = self._pending.get(token)
        if pending is None:
            pending = self._pending[token] = asyncio.ensure_future(self._exchange(token))
            pending.add_done_callback(lambda _f: self._pending.pop(token, None))
        return await asyncio.shield(pending)

    async def _exchange(self, token: str) -> str:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        form = {"grant_type": GRANT_TYPE, "subject_token": token, "subject_token_type": JWT_TOKEN_TYPE,
                "audience": self.audience}
        try:
            async with self._session.post(self.url, data=form, ssl=self._tls()) as response:
                body = await response.content.read(MAX_ANSWER + 1)
                status = response.status
        except (OSError, asyncio.TimeoutError, aiohttp.ClientError) as exc:
            raise Refusal(503, "the token exchange is unavailable", clip(exc)) from None
        try:
            doc = json.loads(body) if len(body) <= MAX_ANSWER else {}
        except ValueError:
            doc = {}
        if status == 200 and isinstance(doc.get("access_token"), str) and isinstance(doc.get("expires_in"), int):
            exchanged = doc["access_token"]
            self._keep(token, exchanged, time.time() + doc["expires_in"])
            return exchanged
        if 400 <= status < 500 and isinstance(doc.get("error_description"), str):
            refusal = Refusal(403, clip(doc["error_description"]))
            self._keep(token, refusal, time.time() + MARGIN + REFUSED_FOR)
            raise refusal
        raise Refusal(503, "the token exchange is unavailable", f"status {status}")

    def _keep(self, token: str, answer, until: float) -> None:
        self._kept[token] = (answer, until)
        while len(self._kept) > self.capacity:
            self._kept.popitem(last=False)

    def _tls(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        for cafile in self.cafiles:
            if Path(cafile).is_file():
                context.load_verify_locations(cafile=str(cafile))
        return context

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
