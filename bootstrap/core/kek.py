"""Key-encryption keys: what wraps the payload data keys at rest.

A KEK wraps bytes with associated data and unwraps them only with the same associated data, so a
wrapped data key names the namespace it belongs to and cannot be moved to another. `FileKek` is an
AES-256 key in codec-kek/kek.key (the `file` backend); `hsm.TokenKek` is an AES key inside a
PKCS#11 token that never leaves it (the `pkcs11` backend). Both use AES-256-GCM.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import BundleError
from ..store import KEY_MODE, Action, Layout, Skip, Write, read_optional

KEK_BYTES = 32
NONCE_BYTES = 12


class UnwrapError(BundleError):
    """Wrapped bytes did not authenticate: another KEK, other associated data, or tampered."""


class Kek(Protocol):
    kek_id: str

    def wrap(self, plain: bytes, aad: bytes) -> bytes: ...

    def unwrap(self, blob: bytes, aad: bytes) -> bytes: ...


class FileKek:
    def __init__(self, key: bytes):
        if len(key) != KEK_BYTES:
            raise BundleError(f"the key-encryption key must be {KEK_BYTES} bytes")
        self._aead = AESGCM(key)
        # Names the key without revealing it: a keyring says which KEK wrapped it.
        self.kek_id = "file:" + hashlib.sha256(b"temporal-bundle kek id\x00" + key).hexdigest()[:16]

    @staticmethod
    def generate_bytes() -> bytes:
        return secrets.token_bytes(KEK_BYTES)

    @classmethod
    def load(cls, path) -> "FileKek":
        data = read_optional(path)
        if data is None:
            raise BundleError(f"{path} not found: the data keys' key-encryption key (run init first)")
        return cls(data)

    def wrap(self, plain: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plain, aad)

    def unwrap(self, blob: bytes, aad: bytes) -> bytes:
        try:
            return self._aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
        except (InvalidTag, ValueError):
            raise UnwrapError("does not unwrap") from None


def plan_file_kek(layout: Layout) -> tuple[FileKek, list[Action]]:
    """The file backend's KEK, created with the first data keys. Never re-created while wrapped
    keys exist: a new KEK would leave every data key, and so all encrypted history, unreadable."""
    data = read_optional(layout.codec_kek)
    if data is not None:
        return FileKek(data), [Skip(layout.codec_kek)]
    existing = read_optional(layout.codec_keys)
    if existing is not None and b'"wrapped-v2"' in existing:
        raise BundleError(f"{layout.codec_kek} is missing but {layout.codec_keys} is wrapped by it: "
                          "restore it from your backup (a new one would make every data key unreadable)")
    key = FileKek.generate_bytes()
    return FileKek(key), [Write(layout.codec_kek, key, KEY_MODE, "created")]


# --------------------------------------------------------------------------- one KEK per namespace

LEGACY_NAME = "_legacy"  # the pre-v2 shared ring's files: no namespace name starts with "_"


def key_name(namespace: str) -> str:
    """The file (or token label) suffix of a namespace's KEK and ring; "" is the pre-v2 ring."""
    return LEGACY_NAME if namespace == "" else namespace


class FileKeks:
    """codec-kek/<namespace>.key: one file KEK per namespace (the `file` backend under per-namespace
    custody). A process holds only the files it is given: a KEK that is not there is None, and
    that namespace's ring stays shut to it. `single()` is the bundle-wide codec-kek/kek.key a bundle
    had before per-namespace custody (migration reads it, then drops it)."""

    def __init__(self, directory):
        from pathlib import Path

        self.directory = Path(directory)
        self._created: dict[str, FileKek] = {}

    def path(self, namespace: str):
        return self.directory / f"{key_name(namespace)}.key"

    def files(self, namespace: str) -> tuple:
        """The files whose change means the KEK changed (watched beside the ring)."""
        return (self.path(namespace),)

    def kek(self, namespace: str) -> FileKek | None:
        if namespace in self._created:
            return self._created[namespace]
        data = read_optional(self.path(namespace))
        return FileKek(data) if data is not None else None

    def create(self, namespace: str) -> tuple[FileKek, Action | None]:
        """A new KEK for a namespace that has no ring yet, and the write that keeps it."""
        key = FileKek.generate_bytes()
        self._created[namespace] = FileKek(key)
        return self._created[namespace], Write(self.path(namespace), key, KEY_MODE, "created")

    def single(self) -> FileKek | None:
        data = read_optional(self.directory / "kek.key")
        return FileKek(data) if data is not None else None
