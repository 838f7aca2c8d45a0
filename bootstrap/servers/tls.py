"""TLS for the bundle's HTTPS services: a context that follows certificate re-issues, and
asyncio's TLS buffers cut down to one record per connection."""

from __future__ import annotations

import asyncio.sslproto
import contextlib
import ssl
from pathlib import Path

from ..core.watched import WatchedFile

TLS_RECORD = 16 * 1024
TLS_READ_BUFFER = 2 * TLS_RECORD  # what one connection may buffer of a body nobody reads yet (see connections.py)


class ReloadingTLS:
    """The listener's SSLContext hands every handshake the context for the current cert and key
    files (via the SNI callback, which runs for every ClientHello), rebuilt when they change.
    A half-written pair (cert replaced, key not yet) keeps the last good context."""

    def __init__(self, cert: Path, key: Path):
        self.cert, self.key = Path(cert), Path(key)
        self._pair = WatchedFile(self.cert, lambda _: self._build(), also=(self.key,))
        self.context()  # fail at start, not on the first handshake, if the pair is unusable
        self.listener = self._build()
        self.listener.sni_callback = self._select

    client_ca: Path | None = None

    def ask_client_certs(self, ca: Path) -> None:
        """Ask every client for a certificate (optional: browsers send none) and verify one that is
        sent against `ca`; the handler reads the verified one from the transport's `peercert`."""
        self.client_ca = Path(ca)
        self._pair = WatchedFile(self.cert, lambda _: self._build(), also=(self.key, self.client_ca))
        self.context()
        self.listener = self._build()
        self.listener.sni_callback = self._select

    def _build(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert, self.key)
        if self.client_ca is not None:
            ctx.verify_mode = ssl.CERT_OPTIONAL
            ctx.load_verify_locations(self.client_ca)
        return ctx

    def context(self) -> ssl.SSLContext:
        try:
            return self._pair.current()
        except (OSError, ssl.SSLError):
            if self._pair.last is None:
                raise
            return self._pair.last

    def _select(self, sslobj, server_name, listener) -> None:
        with contextlib.suppress(OSError, ssl.SSLError):
            sslobj.context = self.context()


def shrink_tls_buffers() -> None:
    """asyncio's TLS transport gives every connection a 256 KiB read buffer from accept on:
    a thousand idle connections would hold 256 MB. One TLS record (16 KiB) is all a read needs."""
    asyncio.sslproto.SSLProtocol.max_size = TLS_RECORD
