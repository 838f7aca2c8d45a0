"""Who may use the codec: JWKS sources for token verification and Temporal's role lattice."""

from __future__ import annotations

import json
import ssl
import threading
import time
import urllib.request
from pathlib import Path

from .jwks import JWKSSource

ROLE_BITS = {"worker": 1, "read": 2, "write": 4, "admin": 8}
SYSTEM_NAMESPACE = "temporal-system"
PERMISSIONS_CLAIM = "permissions"


# --------------------------------------------------------------------------- authorization


def role_for(claims: dict, namespace: str) -> int:
    """The role bits a token holds on `namespace`, as Temporal's default claim mapper and
    authorizer compute them: namespace grants and system grants OR-ed separately, the better wins."""
    namespace_bits = system_bits = 0
    permissions = claims.get(PERMISSIONS_CLAIM)
    for permission in permissions if isinstance(permissions, list) else []:
        if not isinstance(permission, str) or permission.count(":") != 1:
            continue
        scope, role = permission.split(":")
        bits = ROLE_BITS.get(role.lower(), 0)
        if scope == SYSTEM_NAMESPACE:
            system_bits |= bits
        elif scope == namespace:
            namespace_bits |= bits
    return max(namespace_bits, system_bits)


def grants(claims: dict, namespace: str, required: str) -> bool:
    return role_for(claims, namespace) >= ROLE_BITS[required]


# --------------------------------------------------------------------------- key sources


class FileJWKS:
    """The bundle's jwks.json, re-read when it changes."""

    def __init__(self, path: Path):
        self.source, self.description = JWKSSource(path), str(path)
        self._raw, self._doc, self._lock = None, None, threading.Lock()

    def document(self, kid: str | None = None) -> dict:
        raw = self.source.current()  # raises OSError/ValueError if missing or not a JWKS
        with self._lock:
            if raw is not self._raw:
                self._doc, self._raw = json.loads(raw), raw
            return self._doc


class URLJWKS:
    """A JWKS URL, fetched every `ttl` seconds, and again (at most every 5s) for an unknown kid.
    https is verified against the system CAs plus `cafile` (re-read each fetch: CA rotations)."""

    def __init__(self, url: str, cafile: Path | None, ttl: float = 60.0, timeout: float = 10.0):
        self.url, self.cafile, self.ttl, self.timeout, self.description = url, cafile, ttl, timeout, url
        self._doc, self._fetched, self._lock = None, 0.0, threading.Lock()

    def document(self, kid: str | None = None) -> dict:
        with self._lock:
            age = time.monotonic() - self._fetched
            stale = self._doc is None or age >= self.ttl
            unknown = kid is not None and self._doc is not None and kid not in _kids(self._doc) and age >= 5
            if stale or unknown:
                try:
                    self._doc, self._fetched = self._fetch(), time.monotonic()
                except (OSError, ValueError):
                    if self._doc is None:
                        raise
            return self._doc

    def _fetch(self) -> dict:
        context = ssl.create_default_context()
        if self.cafile is not None and Path(self.cafile).exists():
            context.load_verify_locations(cafile=str(self.cafile))
        with urllib.request.urlopen(self.url, context=context, timeout=self.timeout) as response:
            doc = json.loads(response.read(1024 * 1024))
        if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
            raise ValueError("not a JWKS document")
        return doc


def _kids(doc: dict) -> set:
    return {k.get("kid") for k in doc.get("keys", []) if isinstance(k, dict)}


class CombinedJWKS:
    """Several JWKS URLs as one key set: the bundle's own (for CLI users with bundle tokens) and an
    OIDC provider's (for Web UI users, whose access token the UI passes on)."""

    def __init__(self, sources: list):
        self.sources = sources
        self.description = ", ".join(s.description for s in sources)

    def document(self, kid: str | None = None) -> dict:
        return {"keys": [k for source in self.sources for k in source.document(kid).get("keys", [])]}
