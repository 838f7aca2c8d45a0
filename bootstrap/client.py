"""Client helpers for applications: connect with a role's mTLS cert + token from the bundle
directory, and keep a long-running client's token fresh by re-reading the token file.

    from bootstrap.client import connect, TokenFileWatcher
    client = await connect("temporal:7233", bundle_dir="/bundle", role="worker")
    watcher = TokenFileWatcher(client, "/bundle/tokens/worker.jwt")
    asyncio.create_task(watcher.run())   # sets client.api_key whenever the file changes

Workers never hold the signing key: a refresher (`temporal-bundle rotate tokens` on a timer)
re-mints the files, and this watcher hands the new token to the live client and its workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

from .core.watched import WatchedFile
from .errors import BundleError


@dataclass(frozen=True)
class RoleCredentials:
    ca: bytes
    cert: bytes
    key: bytes
    token: str | None

    @classmethod
    def load(
        cls, bundle_dir: str | Path, role: str, cert_dir: str = "clients", with_token: bool = True, token_dir: str = "tokens"
    ):
        root = Path(bundle_dir)
        cert, key = _read_matching_pair(root / cert_dir / f"{role}.pem", root / cert_dir / f"{role}.key")
        token = read_token(root / token_dir / f"{role}.jwt") if with_token else None
        return cls(_read(root / "trust" / "ca.pem"), cert, key, token)

    def tls_config(self, server_name: str):
        from temporalio.service import TLSConfig

        return TLSConfig(
            server_root_ca_cert=self.ca, client_cert=self.cert, client_private_key=self.key, domain=server_name
        )


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc.strerror or exc}") from None


def _read_matching_pair(cert_path: Path, key_path: Path, attempts: int = 20) -> tuple[bytes, bytes]:
    """Cert and key are replaced one after the other during a rotation; a reader landing between
    the two writes sees a mismatched pair, so read again until they belong together."""
    from .core.pki import keys_match, load_cert, load_private_key

    for _ in range(attempts):
        cert, key = _read(cert_path), _read(key_path)
        if keys_match(load_cert(cert, str(cert_path)), load_private_key(key, str(key_path))):
            return cert, key
        time.sleep(0.05)
    raise BundleError(f"{cert_path} and {key_path} do not belong together")


def read_token(path: str | Path) -> str:
    token = _read(Path(path)).decode("ascii", errors="replace").strip()
    if token.count(".") != 2:
        raise BundleError(f"{path} does not hold a JWT")
    return token


async def connect(
    target: str,
    *,
    bundle_dir: str | Path,
    role: str,
    namespace: str = "default",
    server_name: str | None = None,
    **kwargs,
):
    """A temporalio Client authenticated as `role`: mTLS client cert + bearer token."""
    from temporalio.client import Client

    creds = RoleCredentials.load(bundle_dir, role)
    host = server_name or target.rsplit(":", 1)[0]
    return await Client.connect(
        target, namespace=namespace, tls=creds.tls_config(host), api_key=creds.token, **kwargs
    )


class TokenFileWatcher:
    """Polls a token file and sets `client.api_key` when it changes (no reconnect needed). The file
    as it is at start counts as seen: the client connected with it."""

    def __init__(self, client, path: str | Path, interval: float = 5.0):
        self.client, self.path, self.interval = client, Path(path), interval
        self._file, self._changed = WatchedFile(self.path, self._read), False
        with contextlib.suppress(OSError, BundleError):
            self._file.current()
        self._changed = False

    def _read(self, path: Path) -> str:
        token = read_token(path)
        self._changed = True  # WatchedFile parses only a file whose (inode, mtime, size) changed
        return token

    def refresh_once(self) -> bool:
        """Apply the file's token if it changed; True when the client got a new token. Raises
        BundleError for a changed file that holds no token; a missing file is no change."""
        try:
            token = self._file.current()
        except OSError:
            return False
        changed, self._changed = self._changed, False
        if not changed or token == self.client.api_key:
            return False
        self.client.api_key = token
        return True

    async def run(self) -> None:
        while True:
            try:
                self.refresh_once()
            except BundleError:
                pass  # a missing file mid-rotation: keep the current token and look again
            await asyncio.sleep(self.interval)


# --------------------------------------------------------------------------- workload identity

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"
# Where the kubelet projects a service-account token in the pod spec of docs/workload-identity.md's example.
PROJECTED_TOKEN = "/var/run/secrets/temporal/token"


@dataclass(frozen=True)
class ExchangedToken:
    token: str
    expires_in: int
    obtained: float  # time.monotonic() when it was received

    def refresh_due(self, fraction: float = 0.5) -> float:
        """When (monotonic) to exchange again: at `fraction` of its lifetime, well before it ends.
        expires_in is whole seconds rounded down by up to one, hence the half second off. A token cut
        short by a nearly expired subject token comes back soon, after the kubelet's next rotation."""
        return self.obtained + max(0.25, self.expires_in * fraction - 0.5)


class TokenExchangeError(BundleError):
    pass


class WorkloadIdentity:
    """A credentials source: reads the projected service-account token file (the kubelet rewrites it
    when it rotates the token, so it is read again for every exchange) and trades it at the
    bundle's token exchange for a short-lived Temporal token.

        identity = WorkloadIdentity("https://token-exchange:8444/token", ca_file="/bundle/trust/ca.pem")
        token = identity.exchange()          # or await identity.exchange_async()
    """

    def __init__(self, exchange_url: str, *, token_file: str | Path = PROJECTED_TOKEN, ca_file: str | Path | None = None,
                 audience: str | None = None, timeout: float = 10.0):
        if not exchange_url.startswith("https://"):
            raise BundleError(f"the token exchange URL must be https, got {exchange_url!r}")
        self.url, self.token_file, self.ca_file = exchange_url, Path(token_file), ca_file
        self.audience, self.timeout = audience, timeout

    def exchange(self) -> ExchangedToken:
        import json
        import ssl
        import urllib.error
        import urllib.parse
        import urllib.request

        form = {"grant_type": GRANT_TYPE, "subject_token": read_token(self.token_file), "subject_token_type": JWT_TOKEN_TYPE}
        if self.audience:
            form["audience"] = self.audience
        request = urllib.request.Request(self.url, data=urllib.parse.urlencode(form).encode(), method="POST",
                                         headers={"Content-Type": "application/x-www-form-urlencoded"})
        context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        started = time.monotonic()
        try:
            with urllib.request.urlopen(request, context=context, timeout=self.timeout) as response:
                doc = json.loads(response.read(64 * 1024))
        except urllib.error.HTTPError as exc:
            raise TokenExchangeError(f"token exchange refused ({exc.code}): {_oauth_error(exc)}") from None
        except (OSError, ValueError) as exc:
            raise TokenExchangeError(f"token exchange at {self.url} failed: {exc}") from None
        token, expires_in = doc.get("access_token"), doc.get("expires_in")
        if not isinstance(token, str) or token.count(".") != 2 or not isinstance(expires_in, int):
            raise TokenExchangeError("token exchange answered without an access_token and expires_in")
        return ExchangedToken(token, expires_in, started)

    async def exchange_async(self) -> ExchangedToken:
        return await asyncio.to_thread(self.exchange)


def _oauth_error(exc) -> str:
    import json

    try:
        doc = json.loads(exc.read(8 * 1024))
        return f"{doc.get('error')}: {doc.get('error_description', '')}".strip()
    except (OSError, ValueError):
        return exc.reason or "no detail"


class ExchangeRefresher:
    """Keeps a live client's token fresh: exchanges again at half the current token's lifetime and
    sets `client.api_key` (workers built on the client pick it up without a reconnect). A failed
    exchange is retried every `retry` seconds while the current token is still valid; `failures`
    counts them for monitoring."""

    def __init__(self, client, identity: WorkloadIdentity, current: ExchangedToken, retry: float = 2.0):
        self.client, self.identity, self.current, self.retry = client, identity, current, retry
        self.exchanges, self.failures, self.last_error = 1, 0, None

    async def refresh_once(self) -> ExchangedToken:
        token = await self.identity.exchange_async()
        self.client.api_key = token.token
        self.current, self.exchanges = token, self.exchanges + 1
        return token

    async def run(self) -> None:
        while True:
            await asyncio.sleep(max(0.0, self.current.refresh_due() - time.monotonic()))
            try:
                await self.refresh_once()
            except BundleError as exc:
                self.failures, self.last_error = self.failures + 1, str(exc)
                await asyncio.sleep(self.retry)


async def connect_workload(
    target: str,
    *,
    exchange_url: str,
    bundle_dir: str | Path,
    cert_role: str = "worker",
    token_file: str | Path = PROJECTED_TOKEN,
    namespace: str = "default",
    server_name: str | None = None,
    **kwargs,
):
    """A temporalio Client authenticated by workload identity, and the refresher to run beside it:

        client, refresher = await connect_workload("temporal-frontend:7233", namespace="orders",
                                                   exchange_url="https://token-exchange:8444/token",
                                                   bundle_dir="/bundle")
        asyncio.create_task(refresher.run())

    The mTLS client certificate (bundle_dir/clients/<cert_role>.pem) only opens the TLS layer; what
    the client may do comes from the exchanged token alone."""
    from temporalio.client import Client

    creds = RoleCredentials.load(bundle_dir, cert_role, with_token=False)
    identity = WorkloadIdentity(exchange_url, token_file=token_file, ca_file=Path(bundle_dir) / "trust" / "ca.pem")
    first = await identity.exchange_async()
    host = server_name or target.rsplit(":", 1)[0]
    client = await Client.connect(target, namespace=namespace, tls=creds.tls_config(host), api_key=first.token, **kwargs)
    return client, ExchangeRefresher(client, identity, first)
