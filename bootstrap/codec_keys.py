"""The payload data keys (AES-256) in codec-keys/keys.json, and how the bootstrap plans them.

    {"active": "<id>", "keys": {"<id>": "<base64 of 32 random bytes>", ...}}

The active key encrypts; every listed key decrypts, so a rotation adds a key and makes it active
and never drops one: history written with an old key stays readable for as long as it is kept.
Pure apart from `load_keyring` (a read); nothing here needs the Temporal SDK.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from .errors import BundleError
from .store import KEY_MODE, Action, Layout, Skip, Write, read_optional

KEY_BYTES = 32  # AES-256
KEY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
FORCE_HINT = "refusing to replace it without --force"


@dataclass(frozen=True)
class Keyring:
    active: str
    keys: dict[str, bytes]

    @classmethod
    def generate(cls, now: datetime) -> "Keyring":
        key_id = new_key_id(now)
        return cls(key_id, {key_id: secrets.token_bytes(KEY_BYTES)})

    @classmethod
    def parse(cls, data: bytes, what: str = "codec keys") -> "Keyring":
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise BundleError(f"{what}: not JSON") from None
        if not isinstance(doc, dict) or set(doc) != {"active", "keys"}:
            raise BundleError(f'{what}: expected exactly {{"active": ID, "keys": {{ID: BASE64}}}}')
        active, raw_keys = doc["active"], doc["keys"]
        if not isinstance(raw_keys, dict) or not raw_keys:
            raise BundleError(f"{what}: keys must be a non-empty mapping of key id to base64 key")
        keys = {}
        for key_id, encoded in raw_keys.items():
            if not KEY_ID.match(key_id):
                raise BundleError(f"{what}: invalid key id {key_id!r} (letters, digits, '.', '_', '-'; at most 64)")
            try:
                key = base64.b64decode(encoded, validate=True) if isinstance(encoded, str) else b""
            except (binascii.Error, ValueError):
                key = b""
            if len(key) != KEY_BYTES:
                raise BundleError(f"{what}: key {key_id!r} is not {KEY_BYTES} bytes of base64")
            keys[key_id] = key
        if not isinstance(active, str) or active not in keys:
            raise BundleError(f"{what}: active key {active!r} is not among the keys")
        return cls(active, keys)

    def to_bytes(self) -> bytes:
        doc = {"active": self.active, "keys": {k: base64.b64encode(v).decode() for k, v in sorted(self.keys.items())}}
        return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()

    def rotated(self, now: datetime) -> "Keyring":
        """A new active key; every old key kept, for decoding."""
        key_id = new_key_id(now)
        while key_id in self.keys:
            key_id = new_key_id(now)
        return Keyring(key_id, {**self.keys, key_id: secrets.token_bytes(KEY_BYTES)})


def new_key_id(now: datetime) -> str:
    """Sortable by creation date, unique by its random suffix; says nothing about the key."""
    return f"{now:%Y%m%d}-{secrets.token_hex(4)}"


def load_keyring(path) -> Keyring:
    data = read_optional(path)
    if data is None:
        raise BundleError(f"{path} not found; run generate-certs (or init) first")
    return Keyring.parse(data, str(path))


def plan_codec_keys(layout: Layout, force: bool, now: datetime) -> list[Action]:
    """Create the keyring if missing. A keyring we cannot read is replaced only with --force; a
    good one is never dropped, not even with --force: its keys are the only way to read history
    already written. --force then rotates it (new active key, old ones kept for decoding)."""
    path = layout.codec_keys
    existing = read_optional(path)
    if existing is None:
        return [Write(path, Keyring.generate(now).to_bytes(), KEY_MODE, "created")]
    try:
        keyring = Keyring.parse(existing, str(path))
    except BundleError as exc:
        if not force:
            raise BundleError(f"{exc}; {FORCE_HINT}") from None
        return [Write(path, Keyring.generate(now).to_bytes(), KEY_MODE, "replaced (--force): it was unreadable")]
    if force:
        return [Write(path, keyring.rotated(now).to_bytes(), KEY_MODE, "rotated (--force): old keys kept for decoding")]
    return [Skip(path)]


def plan_rotation(layout: Layout, now: datetime) -> tuple[Action, str]:
    """`rotate --kind codec-key`: one atomic write; consumers re-read the file when it changes."""
    keyring = load_keyring(layout.codec_keys)
    new = keyring.rotated(now)
    message = f"data key {new.active} now encrypts; {len(keyring.keys)} older key(s) kept for decoding"
    return Write(layout.codec_keys, new.to_bytes(), KEY_MODE, f"new active data key {new.active}"), message
