"""Data keys from the codec server's key service, for workers that hold no key-encryption key.

    from bootstrap.core.codec import data_converter
    from bootstrap.key_client import KeyServiceKeys
    keys = KeyServiceKeys.from_export("/etc/worker")           # what `make export ROLE=worker` wrote
    converter = data_converter(keys, namespace="orders")

The worker authenticates with its client certificate (mutual TLS) and its role's token, and gets
only the rings of the namespaces its token may write to (servers/key_service.py). On Kubernetes
with workload identity the token is the one the exchange gives for the pod's service-account
token (`for_workload`), and the certificate the role Secret's: the pod mounts no bundle token and
no key material.

    identity = WorkloadIdentity(os.environ["TEMPORAL_EXCHANGE_URL"], ca_file="/bundle/trust/ca.pem")
    keys = KeyServiceKeys.for_workload(os.environ["TEMPORAL_KEY_SERVICE_URL"], bundle_dir="/bundle",
                                       identity=identity)
 Rings live in
this process's memory only, for the service's `ttl` (60 s); a payload with a key id the cached
ring does not know (a rotation since) fetches the ring again, at most once per `unknown_every`.
If the service cannot be reached, a cached ring keeps serving until `lifetime` (300 s) after it
was fetched; a worker with no cached ring fails with one line naming the service and the cause.
A refusal (401/403) drops the cached ring at once.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

from .core.codec import CodecError
from .core.codec_keys import Keyring
from .core.watched import WatchedFile

LIFETIME = 300.0
UNKNOWN_EVERY = 1.0
TIMEOUT = 5.0


class KeyServiceError(CodecError):
    """The key service refused, or could not be reached and no cached ring is left."""


@dataclass
class _Cached:
    ring: Keyring
    fetched: float
    ttl: float


class KeyServiceKeys:
    """The codec's key source (encrypting/decrypting/known, like a KeySet) over the key service."""

    def __init__(self, url: str, *, cafile, cert, key, token_file=None, token=None, lifetime: float = LIFETIME,
                 unknown_every: float = UNKNOWN_EVERY, timeout: float = TIMEOUT, clock=time.monotonic,
                 server_name: str | None = None):
        """`token_file` (the role's token, re-read for every fetch) or `token` (a callable giving
        the current token, e.g. an exchanged one); `server_name`: the name the codec server's
        certificate is checked for when the URL's host is another (a Service's namespaced name)."""
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise KeyServiceError(f"key service URL {url!r}: must be https://host[:port]/path")
        if (token_file is None) == (token is None):
            raise KeyServiceError("give the key service client a token_file or a token source, one of them")
        self.url, self.host, self.port, self.base = url, parts.hostname, parts.port or 443, parts.path.rstrip("/")
        self.token_file = Path(token_file) if token_file is not None else None
        self._token = token or (lambda: self.token_file.read_text().strip())
        self.server_name, self.lifetime, self.unknown_every = server_name, lifetime, unknown_every
        self.exchanged: ExchangedTokens | None = None  # for_workload's token source
        self.timeout, self.clock = timeout, clock
        self._tls = WatchedFile(Path(cert), lambda _: self._context(cafile, cert, key), also=(Path(key), Path(cafile)))
        self._cache: dict[str, _Cached] = {}
        self._asked: dict[str, float] = {}
        self._conn: http.client.HTTPSConnection | None = None
        self._conn_context: ssl.SSLContext | None = None
        self._lock = threading.Lock()
        self.fetches = 0

    @classmethod
    def from_export(cls, directory, **options) -> "KeyServiceKeys":
        """From an export directory: key-service.json, ca.pem and the role's .pem/.key/.jwt."""
        directory = Path(directory)
        try:
            doc = json.loads((directory / "key-service.json").read_text())
            [token] = sorted(directory.glob("*.jwt"))
        except (OSError, ValueError) as exc:
            raise KeyServiceError(f"{directory}: not a worker export with key-service.json and one token ({exc})") from None
        role = token.stem
        return cls(doc["url"], cafile=directory / doc.get("ca", "ca.pem"), cert=directory / f"{role}.pem",
                   key=directory / f"{role}.key", token_file=token, **options)

    @classmethod
    def for_workload(cls, url: str, *, bundle_dir, identity, cert_role: str = "worker", **options) -> "KeyServiceKeys":
        """A workload-identity worker (Kubernetes): the role Secret's files as the example pod
        mounts them (bundle_dir/trust/ca.pem, clients/<cert_role>.pem/.key) and the token the
        exchange gives `identity` (client.WorkloadIdentity), exchanged again at half its lifetime.
        A refused exchange is a refusal here (one line); an unreachable one, an outage."""
        bundle_dir = Path(bundle_dir)
        source = ExchangedTokens(identity)
        keys = cls(url, cafile=bundle_dir / "trust" / "ca.pem", cert=bundle_dir / "clients" / f"{cert_role}.pem",
                   key=bundle_dir / "clients" / f"{cert_role}.key", token=source, **options)
        keys.exchanged = source
        return keys

    @property
    def exchanges(self) -> int:
        """How many tokens the exchange gave this client (for_workload only)."""
        return self.exchanged.count if self.exchanged is not None else 0

    # ---- the key-source interface codec.py encrypts and decrypts through

    def encrypting(self, namespace: str) -> tuple[str, bytes]:
        ring = self.ring(namespace)
        return ring.active, ring.keys[ring.active]

    def decrypting(self, key_id: str, namespace: str | None) -> bytes | None:
        if namespace is None:
            return None  # payloads from before the namespace binding: only the codec server opens them
        key = self.ring(namespace).keys.get(key_id)
        if key is None and self.clock() - self._asked.get(namespace, float("-inf")) >= self.unknown_every:
            key = self.ring(namespace, refresh=True).keys.get(key_id)  # rotated since we fetched?
        return key

    def known(self) -> list[str]:
        return sorted(k for cached in self._cache.values() for k in cached.ring.keys)

    def check(self, namespace: str) -> None:
        """Fail now, not on the first workflow, if this worker cannot get the namespace's keys."""
        self.ring(namespace)

    # ---- the cache

    def ring(self, namespace: str, refresh: bool = False) -> Keyring:
        cached = self._cache.get(namespace)  # the fast path takes no lock: one dict read is atomic
        if cached is not None and not refresh and self.clock() - cached.fetched < cached.ttl:
            return cached.ring
        with self._lock:
            cached, now = self._cache.get(namespace), self.clock()
            if cached is not None and not refresh and now - cached.fetched < cached.ttl:
                return cached.ring
            self._asked[namespace] = now
            try:
                ring, ttl = self._fetch(namespace)
            except KeyServiceError:
                self._cache.pop(namespace, None)  # refused: nothing cached may serve any more
                raise
            except (OSError, http.client.HTTPException, ssl.SSLError, ValueError) as exc:
                if cached is not None and now - cached.fetched < self.lifetime:
                    return cached.ring
                raise CodecError(f"key service {self.url} unreachable ({type(exc).__name__}: {exc}); "
                                 f"no cached data keys for namespace {namespace!r}") from None
            self._cache[namespace] = _Cached(ring, self.clock(), min(ttl, self.lifetime))
            return ring

    def _fetch(self, namespace: str) -> tuple[Keyring, float]:
        token = self._token()
        status, body = self._get(f"{self.base}/{quote(namespace, safe='')}", token)
        self.fetches += 1
        if status in (400, 401, 403, 404):
            reason = _error_of(body)
            raise KeyServiceError(f"key service {self.url} refused the data keys of namespace {namespace!r} "
                                  f"({status}: {reason})")
        if status != 200:
            raise ValueError(f"HTTP {status}")
        doc = json.loads(body)
        if doc.get("namespace") != namespace:
            raise ValueError("the reply is for another namespace")
        ring = Keyring.from_doc({"active": doc["active"], "keys": doc["keys"]}, "key service reply", lambda _id, raw: raw)
        return ring, float(doc.get("ttl", 60))

    def _get(self, path: str, token: str) -> tuple[int, bytes]:
        for attempt in (0, 1):  # a kept-alive connection the server closed meanwhile: once more, fresh
            conn = self._connection()
            try:
                conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
                response = conn.getresponse()
                return response.status, response.read(64 * 1024)
            except (OSError, http.client.HTTPException):
                conn.close()
                self._conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _connection(self) -> http.client.HTTPSConnection:
        context = self._tls.current()
        if self._conn is None or self._conn_context is not context:  # new certificate: new connection
            if self._conn is not None:
                self._conn.close()
            self._conn = _Connection(self.host, self.port, timeout=self.timeout, context=context,
                                     server_name=self.server_name)
            self._conn_context = context
        return self._conn

    @staticmethod
    def _context(cafile, cert, key) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(cafile))
        ctx.load_cert_chain(str(cert), str(key))
        return ctx

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class ExchangedTokens:
    """A token source over client.WorkloadIdentity: the exchanged token, kept until half its
    lifetime (as client.ExchangeRefresher does for the Temporal client), then exchanged again."""

    def __init__(self, identity):
        self.identity, self.current, self.count = identity, None, 0
        self._lock = threading.Lock()

    def __call__(self) -> str:
        with self._lock:
            if self.current is None or time.monotonic() >= self.current.refresh_due():
                from .errors import BundleError

                try:
                    self.current = self.identity.exchange()
                except BundleError as exc:  # client.TokenExchangeError: one line, says refused or unreachable
                    if str(exc).startswith("token exchange refused"):
                        raise KeyServiceError(f"no token for the key service: {exc}") from None
                    raise OSError(str(exc)) from None
                self.count += 1
            return self.current.token


class _Connection(http.client.HTTPSConnection):
    """An HTTPS connection that checks the server's certificate for `server_name` (default: the host)."""

    def __init__(self, host, port, *, server_name: str | None = None, **kwargs):
        super().__init__(host, port, **kwargs)
        self.server_name = server_name

    def connect(self) -> None:
        if self.server_name is None:
            return super().connect()
        http.client.HTTPConnection.connect(self)
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self.server_name)


def _error_of(body: bytes) -> str:
    try:
        return str(json.loads(body).get("error"))[:200]
    except (ValueError, AttributeError):
        return "no reason given"
