"""The payload data keys, one key ring per namespace, wrapped by a key-encryption key (KEK).

codec-keys/keys.json:

    {"format": "wrapped-v2", "kek": "<kek id>",
     "namespaces": {"<ns>": {"active": "<id>", "keys": {"<id>": "<base64 of the wrapped key>"}}},
     "legacy": {"active": "<id>", "keys": {...}}}          # only in bundles made before v2

Each data key is wrapped with AES-GCM under the KEK (kek.py; a file key or a key inside the
PKCS#11 token) with its namespace and key id as associated data: a ring copied under another
namespace's name does not unwrap, so B's ring never holds A's keys. Data keys are unwrapped only
in the memory of the process that holds the KEK (the codec server, the bootstrap when it
rotates, and a worker given the KEK).

Within a ring the active key encrypts and every listed key decrypts; a rotation adds a key and
never drops one. A bundle made before v2 had one plaintext ring for every namespace,
{"active": ..., "keys": {...}}: `init` (or generate-certs) migrates it into "legacy", wrapped and
kept for decoding old history only, and gives every namespace a ring of its own.

This single-KEK format is what `migrate-codec-keys` moves to per-namespace custody
(namespace_keys.py: one ring file and one KEK per namespace).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
from dataclasses import dataclass, field, replace
from datetime import datetime

from ..errors import BundleError
from .kek import Kek, UnwrapError
from ..store import KEY_MODE, Action, Layout, Skip, Write, read_optional

KEY_BYTES = 32  # AES-256
KEY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
FORCE_HINT = "refusing to replace it without --force"
FORMAT = "wrapped-v2"
LEGACY = ""  # the namespace the pre-v2 shared ring is wrapped under (no namespace is named "")


class KeyringMismatch(BundleError):
    """A ring that does not unwrap under its namespace's name, or was wrapped by another KEK."""


@dataclass(frozen=True)
class Keyring:
    """One ring of plaintext data keys (in memory only)."""

    active: str
    keys: dict[str, bytes]

    @classmethod
    def generate(cls, now: datetime, avoid=()) -> "Keyring":
        key_id = fresh_id(now, avoid)
        return cls(key_id, {key_id: secrets.token_bytes(KEY_BYTES)})

    @classmethod
    def parse(cls, data: bytes, what: str = "codec keys") -> "Keyring":
        """The pre-v2 plaintext format (still what tests and old bundles hold)."""
        return cls.from_doc(parse_json(data, what), what, _plain_key)

    @classmethod
    def from_doc(cls, doc, what: str, decode) -> "Keyring":
        if not isinstance(doc, dict) or set(doc) != {"active", "keys"}:
            raise BundleError(f'{what}: expected exactly {{"active": ID, "keys": {{ID: BASE64}}}}')
        active, raw_keys = doc["active"], doc["keys"]
        if not isinstance(raw_keys, dict) or not raw_keys:
            raise BundleError(f"{what}: keys must be a non-empty mapping of key id to base64 key")
        keys = {}
        for key_id, encoded in raw_keys.items():
            if not KEY_ID.match(key_id):
                raise BundleError(f"{what}: invalid key id {key_id!r} (letters, digits, '.', '_', '-'; at most 64)")
            keys[key_id] = decode(key_id, _b64(encoded))
            if len(keys[key_id]) != KEY_BYTES:
                raise BundleError(f"{what}: key {key_id!r} is not {KEY_BYTES} bytes of base64")
        if not isinstance(active, str) or active not in keys:
            raise BundleError(f"{what}: active key {active!r} is not among the keys")
        return cls(active, keys)

    def to_doc(self, encode) -> dict:
        return {"active": self.active, "keys": {k: base64.b64encode(encode(k, v)).decode() for k, v in sorted(self.keys.items())}}

    def to_bytes(self) -> bytes:
        return dump_json(self.to_doc(lambda _id, key: key))

    def rotated(self, now: datetime, avoid=()) -> "Keyring":
        """A new active key; every old key kept, for decoding."""
        key_id = fresh_id(now, {*self.keys, *avoid})
        return Keyring(key_id, {**self.keys, key_id: secrets.token_bytes(KEY_BYTES)})

    # The key-source interface codec.py encrypts and decrypts through (KeySet has the same):
    def encrypting(self, namespace: str) -> tuple[str, bytes]:
        return self.active, self.keys[self.active]

    def decrypting(self, key_id: str, namespace: str | None) -> bytes | None:
        return self.keys.get(key_id)

    def known(self) -> list[str]:
        return sorted(self.keys)


@dataclass(frozen=True)
class KeySet:
    """Every namespace's ring, plus the pre-v2 shared ring if the bundle had one (decode only)."""

    rings: dict[str, Keyring]
    legacy: Keyring | None = None
    kek_id: str = field(default="", compare=False)

    @classmethod
    def parse(cls, data: bytes, kek: Kek, what: str = "codec keys") -> "KeySet":
        doc = parse_json(data, what)
        if isinstance(doc, dict) and set(doc) == {"active", "keys"}:
            raise BundleError(f"{what}: a pre-v2 plaintext keyring; run init (or generate-certs) to migrate it")
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or not set(doc) <= {"format", "kek", "namespaces", "legacy"}:
            raise BundleError(f'{what}: expected {{"format": "{FORMAT}", "kek": ID, "namespaces": {{NS: RING}}}}')
        if doc.get("kek") != kek.kek_id:
            raise KeyringMismatch(f"{what}: wrapped by key-encryption key {doc.get('kek')!r}, but the backend's is "
                                  f"{kek.kek_id!r}: wrong backend, token or codec-kek/kek.key")
        namespaces = doc.get("namespaces")
        if not isinstance(namespaces, dict):
            raise BundleError(f"{what}: namespaces must map namespace names to key rings")
        rings = {ns: unwrap_ring(ring, ns, kek, what) for ns, ring in namespaces.items()}
        legacy = unwrap_ring(doc["legacy"], LEGACY, kek, what) if "legacy" in doc else None
        return cls(rings, legacy, kek.kek_id)

    def to_bytes(self, kek: Kek) -> bytes:
        doc = {"format": FORMAT, "kek": kek.kek_id,
               "namespaces": {ns: wrap_ring(ring, ns, kek) for ns, ring in sorted(self.rings.items())}}
        if self.legacy is not None:
            doc["legacy"] = wrap_ring(self.legacy, LEGACY, kek)
        return dump_json(doc)

    def all_ids(self) -> set[str]:
        ids = {k for ring in self.rings.values() for k in ring.keys}
        return ids | set(self.legacy.keys if self.legacy else ())

    def with_namespaces(self, names, now: datetime) -> "KeySet":
        rings = dict(self.rings)
        for ns in names:
            if ns not in rings:
                rings[ns] = Keyring.generate(now, self.all_ids() | {k for r in rings.values() for k in r.keys})
        return replace(self, rings=rings)

    def rotated(self, names, now: datetime) -> "KeySet":
        rings = dict(self.rings)
        for ns in names:
            if ns not in rings:
                raise BundleError(f"namespace {ns!r} has no data keys; add it to bundle.yaml and run init")
            rings[ns] = rings[ns].rotated(now, self.all_ids() | {k for r in rings.values() for k in r.keys})
        return replace(self, rings=rings)

    def encrypting(self, namespace: str) -> tuple[str, bytes]:
        ring = self.rings.get(namespace)
        if ring is None:
            raise BundleError(f"no data keys for namespace {namespace!r}; add it to bundle.yaml and run init")
        return ring.encrypting(namespace)

    def decrypting(self, key_id: str, namespace: str | None) -> bytes | None:
        """Only the payload's own namespace's ring, or the pre-v2 shared ring: never another's."""
        ring = self.rings.get(namespace) if namespace is not None else None
        key = ring.keys.get(key_id) if ring else None
        if key is None and self.legacy is not None:
            key = self.legacy.keys.get(key_id)
        return key

    def known(self) -> list[str]:
        return sorted(self.all_ids())


def _aad(namespace: str, key_id: str) -> bytes:
    return b"temporal-bundle data key\x00" + namespace.encode() + b"\x00" + key_id.encode()


def wrap_ring(ring: Keyring, namespace: str, kek: Kek) -> dict:
    return ring.to_doc(lambda key_id, key: kek.wrap(key, _aad(namespace, key_id)))


def unwrap_ring(doc, namespace: str, kek: Kek, what: str) -> Keyring:
    label = "the pre-v2 ring" if namespace == LEGACY else f"namespace {namespace!r}"

    def unwrap(key_id: str, blob: bytes) -> bytes:
        try:
            return kek.unwrap(blob, _aad(namespace, key_id))
        except UnwrapError:
            raise KeyringMismatch(
                f"{what}: data key {key_id!r} of {label} does not unwrap: the ring is bound to another "
                "namespace, or was wrapped by another key-encryption key"
            ) from None

    return Keyring.from_doc(doc, f"{what} ({label})", unwrap)


def parse_json(data: bytes, what: str):
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise BundleError(f"{what}: not JSON") from None


def _b64(encoded) -> bytes:
    try:
        return base64.b64decode(encoded, validate=True) if isinstance(encoded, str) else b""
    except (binascii.Error, ValueError):
        return b""


def _plain_key(_key_id: str, raw: bytes) -> bytes:
    return raw


def dump_json(doc: dict) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def fresh_id(now: datetime, avoid) -> str:
    key_id = new_key_id(now)
    while key_id in avoid:
        key_id = new_key_id(now)
    return key_id


def new_key_id(now: datetime) -> str:
    """Sortable by creation date, unique by its random suffix; says nothing about the key."""
    return f"{now:%Y%m%d}-{secrets.token_hex(4)}"


def load_source(path, kek_factory) -> "Keyring | KeySet":
    """What a codec reads: the per-namespace KeySet (the KEK is asked for only then), or a pre-v2
    plaintext Keyring, which keeps a worker of a not yet migrated bundle running."""
    data = read_optional(path)
    if data is None:
        raise BundleError(f"{path} not found; run generate-certs (or init) first")
    doc = parse_json(data, str(path))
    if isinstance(doc, dict) and set(doc) == {"active", "keys"}:
        return Keyring.parse(data, str(path))
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise BundleError(f'{path}: expected {{"format": "{FORMAT}", ...}} or a pre-v2 keyring')
    return KeySet.parse(data, kek_factory(), str(path))


def load_keyset(path, kek: Kek) -> KeySet:
    data = read_optional(path)
    if data is None:
        raise BundleError(f"{path} not found; run generate-certs (or init) first")
    return KeySet.parse(data, kek, str(path))


def plan_codec_keys(layout: Layout, force: bool, now: datetime, namespaces, kek, previous: Kek | None = None) -> list[Action]:
    """The data keys' plan. `kek` is a KEK (the single-KEK keys.json), or what backend.codec_kek
    returns (namespace_plan.Custody), which plans per-namespace custody once a bundle has it."""
    if hasattr(kek, "plan"):
        return kek.plan(layout, force, now, namespaces, previous)
    return plan_single_kek_keys(layout, force, now, namespaces, kek, previous)


def plan_single_kek_keys(layout: Layout, force: bool, now: datetime, namespaces, kek: Kek, previous: Kek | None = None) -> list[Action]:
    """Create the key set if missing, give every configured namespace a ring, migrate a pre-v2
    plaintext ring. Unreadable keys are replaced only with --force; readable ones are never
    dropped, not even with --force (they are the only way to read history already written):
    --force rotates every ring instead. A ring that does not unwrap is refused, --force or not."""
    path, names = layout.codec_keys, tuple(namespaces)
    existing = read_optional(path)
    if existing is None:
        return [Write(path, KeySet({}).with_namespaces(names, now).to_bytes(kek), KEY_MODE, "created")]
    try:
        keyset = KeySet.parse(existing, kek, str(path))
    except KeyringMismatch:
        if previous is None or parse_json(existing, str(path)).get("kek") != previous.kek_id:
            raise
        # Moved to another backend: the same data keys, re-wrapped under the new KEK.
        moved = KeySet.parse(existing, previous, str(path)).with_namespaces(names, now)
        return [Write(path, moved.to_bytes(kek), KEY_MODE, "re-wrapped under the new backend's key-encryption key")]
    except BundleError as exc:
        legacy = _parse_legacy(existing, str(path))
        if legacy is not None:
            migrated = KeySet({}, legacy).with_namespaces(names, now)
            return [Write(path, migrated.to_bytes(kek), KEY_MODE,
                          "migrated: the shared ring kept (wrapped) for old history; one data key ring per namespace")]
        if not force:
            raise BundleError(f"{exc}; {FORCE_HINT}") from None
        return [Write(path, KeySet({}).with_namespaces(names, now).to_bytes(kek), KEY_MODE,
                      "replaced (--force): it was unreadable")]
    grown = keyset.with_namespaces(names, now)
    if force:
        return [Write(path, grown.rotated(names, now).to_bytes(kek), KEY_MODE,
                      "rotated (--force): old keys kept for decoding")]
    if grown != keyset:
        added = ", ".join(sorted(set(grown.rings) - set(keyset.rings)))
        return [Write(path, grown.to_bytes(kek), KEY_MODE, f"data keys added for namespace(s) {added}")]
    return [Skip(path)]


def _parse_legacy(data: bytes, what: str) -> Keyring | None:
    try:
        return Keyring.parse(data, what)
    except BundleError:
        return None


def plan_rotation(layout: Layout, now: datetime, kek: Kek, namespaces=None) -> tuple[Action, str]:
    """`rotate --kind codec-key [--namespace NS]` of a single-KEK keys.json: one atomic write;
    consumers re-read the file. (Per-namespace custody: namespace_plan.Custody.rotate.)"""
    keyset = load_keyset(layout.codec_keys, kek)
    names = tuple(namespaces or sorted(keyset.rings))
    new = keyset.rotated(names, now)
    done = ", ".join(f"{ns}: {new.rings[ns].active}" for ns in names)
    message = f"new active data key per namespace ({done}); older keys kept for decoding"
    return Write(layout.codec_keys, new.to_bytes(kek), KEY_MODE, f"new active data keys for {', '.join(names)}"), message
