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
import os
import time
from dataclasses import dataclass
from pathlib import Path

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
    from .pki import keys_match, load_cert, load_private_key

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
    """Polls a token file and sets `client.api_key` when it changes (no reconnect needed)."""

    def __init__(self, client, path: str | Path, interval: float = 5.0):
        self.client, self.path, self.interval = client, Path(path), interval
        self._stamp = self._current_stamp()

    def _current_stamp(self):
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino)

    def refresh_once(self) -> bool:
        """Apply the file's token if it changed; True when the client got a new token."""
        stamp = self._current_stamp()
        if stamp is None or stamp == self._stamp:
            return False
        token = read_token(self.path)
        self._stamp = stamp
        if token == self.client.api_key:
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
