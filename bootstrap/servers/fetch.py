"""One HTTPS JSON fetch, for every key source (a JWKS URL, an issuer's OIDC discovery and JWKS).

The body is read to its end (a document may arrive in many TCP segments, seconds apart), never
past `max_bytes` (a larger one is an error, not a truncated parse), within `total` seconds
overall and `idle` seconds between bytes. https is verified against the system CAs plus the
configured CA files that exist (or those files alone, `system_cas=False`), re-read for every fetch
(CA rotations). The result must be a JSON object. Every failure is one FetchError whose message
names what went wrong, never the body; a FetchTimeout when time ran out.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from dataclasses import dataclass
from pathlib import Path

import aiohttp

# A JWKS of 100 RSA-4096 keys is ~90 KiB; kube-apiserver's and the usual OIDC providers' are a few
# KiB. At this cap a document of the smallest JSON values parses to at most ~6 MiB (measured: 256
# KiB of {"kid":""} keeps 4.4 MiB), so a key source holds at most ~11 MiB while it refreshes.
MAX_DOCUMENT_BYTES = 256 * 1024


class FetchError(Exception):
    """A document that could not be fetched or is not a JSON object; the message is safe to log."""


class FetchTimeout(FetchError):
    """The document was not complete within the total time, or the peer went idle."""


@dataclass(frozen=True)
class FetchLimits:
    max_bytes: int = MAX_DOCUMENT_BYTES
    total: float = 10.0  # seconds for the whole fetch: connect, TLS, headers, body
    idle: float = 5.0  # seconds without a byte from the peer


class JSONFetcher:
    """GET (or POST a JSON object to) url -> a JSON object. One connection pool for the fetcher's life; `close()` it."""

    def __init__(self, cafiles: Path | tuple[Path | None, ...] | None = (), token_file: Path | None = None,
                 limits: FetchLimits = FetchLimits(), system_cas: bool = True):
        self.cafiles = cafiles if isinstance(cafiles, tuple) else (cafiles,)
        self.token_file, self.limits, self.system_cas = token_file, limits, system_cas
        self._session: aiohttp.ClientSession | None = None

    async def get(self, url: str) -> dict:
        return await self._fetch(url, None)

    async def post(self, url: str, doc: dict) -> dict:
        """POST a JSON object, read the JSON object answered (an API call such as TokenReview)."""
        return await self._fetch(url, json.dumps(doc).encode())

    async def _fetch(self, url: str, payload: bytes | None) -> dict:
        try:
            async with asyncio.timeout(self.limits.total):
                body = await self._body(url, payload)
        except TimeoutError as exc:  # aiohttp's idle timeout is a TimeoutError too
            idle = isinstance(exc, aiohttp.ServerTimeoutError)
            raise FetchTimeout(f"no byte for {self.limits.idle:g} s" if idle
                               else f"not complete within {self.limits.total:g} s") from None
        except (OSError, aiohttp.ClientError) as exc:  # ssl.SSLError is an OSError
            raise FetchError(_describe(exc)) from None
        return parse_object(body)

    async def _body(self, url: str, payload: bytes | None) -> bytes:
        self._session = self._session or aiohttp.ClientSession(auto_decompress=False)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.limits.idle, sock_read=self.limits.idle)
        headers = self._headers()
        if payload is not None:
            headers["Content-Type"] = "application/json"
        async with self._session.request("GET" if payload is None else "POST", url, data=payload, ssl=self._tls(),
                                         headers=headers, timeout=timeout) as response:
            if response.status not in (200, 201):
                raise FetchError(f"HTTP {response.status}")
            if (response.content_length or 0) > self.limits.max_bytes:
                raise FetchError(self._too_large())
            body = bytearray()
            async for chunk in response.content.iter_any():
                body += chunk
                if len(body) > self.limits.max_bytes:
                    raise FetchError(self._too_large())
            return bytes(body)

    def _tls(self) -> ssl.SSLContext:
        cafiles = [str(cafile) for cafile in self.cafiles if cafile is not None and Path(cafile).exists()]
        if self.system_cas:
            context = ssl.create_default_context()
        elif cafiles:  # given a CA file, create_default_context loads no system CA
            context = ssl.create_default_context(cafile=cafiles.pop(0))
        else:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # trusts nothing: every https fetch fails
        for cafile in cafiles:
            context.load_verify_locations(cafile=cafile)
        return context

    def _headers(self) -> dict:
        # identity: a compressed body would be inflated past the byte cap before it could be counted.
        # jwk-set+json: kube-apiserver serves its JWKS as only that type and answers 406 otherwise.
        headers = {"Accept": "application/json, application/jwk-set+json", "Accept-Encoding": "identity"}
        if self.token_file is not None:  # kube-apiserver's discovery wants the pod's own token
            headers["Authorization"] = f"Bearer {Path(self.token_file).read_text().strip()}"
        return headers

    def _too_large(self) -> str:
        return f"document larger than {self.limits.max_bytes} bytes"

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def parse_object(body: bytes) -> dict:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: nesting deeper than the parser's stack
        raise FetchError(f"not JSON ({type(exc).__name__})") from None
    if not isinstance(doc, dict):
        raise FetchError(f"not a JSON object (a JSON {type(doc).__name__})")
    return doc


def _describe(exc: Exception) -> str:
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the connection closed before the document ended"
    return str(exc) or type(exc).__name__
