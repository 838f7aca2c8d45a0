"""Payload encryption for the Python SDK: AES-256-GCM with the bundle's data keys.

    from bootstrap.client import connect
    from bootstrap.codec import data_converter
    client = await connect("temporal:7233", bundle_dir="/bundle", role="worker", namespace="orders",
                           data_converter=data_converter("/bundle/codec-keys/keys.json", namespace="orders"))

Every payload the SDK sends (workflow and activity inputs and results, signals, queries, updates,
memos, failure details, and with data_converter() also error messages and stack traces) is
replaced by one whose data is nonce || AES-GCM(whole original Payload proto) and whose metadata
says `encoding: binary/encrypted`, `encryption-key-id: <id>` and `encryption-namespace: <ns>`.
The server, its database and anyone reading history without the keys see only that. Key id and
namespace are bound into the ciphertext as associated data, so relabelling a payload with another
key id or another namespace fails authentication: the codec server can trust the namespace a
payload names when it decides who may read it.

The namespace comes from the SDK's serialization context (the namespace of the workflow or
activity the payload belongs to), else from `namespace=`; with neither, encoding fails rather than
write a payload no namespace owns. Payloads written before namespaces were bound (no
`encryption-namespace`) still decrypt here; the codec server shows them only to cluster-wide
readers (see servers/codec.py).

Keys come as a KeySet (one ring per namespace, codec_keys.py): encoding uses the active key of the
namespace's ring; decoding looks the payload's key up in its own namespace's ring only (or the
pre-v2 shared ring), so after `rotate --kind codec-key` old history still decodes and one
namespace's keys never open another's payloads. A bare Keyring serves every namespace (tests,
and bundles not yet migrated). A payload that is not encrypted passes
through decode unchanged. The keyring file is re-read when it changes, so a running worker picks
up a rotation without a restart.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
import threading
import time
from pathlib import Path
from typing import Iterable, Sequence

import temporalio.converter
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.message import DecodeError
from temporalio.api.common.v1 import Payload

from .codec_keys import LEGACY, Keyring, KeySet, load_source
from .kek import FileKeks
from .namespace_keys import Manifest, parse_manifest, parse_ring, ring_path
from .watched import WatchedFile
from ..errors import BundleError
from ..store import read_optional

ENCODING = b"binary/encrypted"
KEY_ID_HEADER = "encryption-key-id"
NAMESPACE_HEADER = "encryption-namespace"
NONCE_BYTES = 12  # 96-bit random nonce, the size GCM is specified for
TAG_BYTES = 16


Keys = Keyring | KeySet  # both answer encrypting(namespace) and decrypting(key_id, namespace)


class CodecError(BundleError):
    """A payload that claims to be ours cannot be decrypted (unknown key, tampered, truncated)."""


def _aad(key_id: str, namespace: str | None) -> bytes:
    """Neither key ids nor namespace names can hold NUL, so the two forms never collide; the
    unbound form is what payloads written before the namespace binding carry."""
    legacy = ENCODING + b"\x00" + key_id.encode()
    return legacy if namespace is None else legacy + b"\x00" + namespace.encode()


@functools.lru_cache(maxsize=64)
def _cipher(key: bytes) -> AESGCM:
    return AESGCM(key)


def is_encrypted(payload: Payload) -> bool:
    return payload.metadata.get("encoding") == ENCODING


def payload_namespace(payload: Payload) -> str | None:
    """The namespace an encrypted payload is bound to; None for one written before the binding."""
    raw = payload.metadata.get(NAMESPACE_HEADER)
    if raw is None:
        return None
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise CodecError(f"encrypted payload has an undecodable {NAMESPACE_HEADER}") from None


def encrypt(payload: Payload, keyring: Keys, namespace: str) -> Payload:
    if not namespace or "\x00" in namespace:
        raise CodecError("payloads are bound to a namespace: pass a namespace name")
    key_id, key = keyring.encrypting(namespace)
    nonce = os.urandom(NONCE_BYTES)
    sealed = _cipher(key).encrypt(nonce, payload.SerializeToString(), _aad(key_id, namespace))
    metadata = {"encoding": ENCODING, KEY_ID_HEADER: key_id.encode(), NAMESPACE_HEADER: namespace.encode()}
    return Payload(metadata=metadata, data=nonce + sealed)


def decrypt(payload: Payload, keyring: Keys) -> Payload:
    """The original payload; one that is not encrypted is returned as it is."""
    if not is_encrypted(payload):
        return payload
    raw_id = payload.metadata.get(KEY_ID_HEADER)
    if raw_id is None:
        raise CodecError(f"encrypted payload has no {KEY_ID_HEADER} metadata")
    return open_sealed(keyring, raw_id.decode(errors="replace"), payload_namespace(payload), payload.data)


def open_sealed(keyring: Keys, key_id: str, namespace: str | None, data: bytes) -> Payload:
    """The payload inside an encrypted payload's parts (what decrypt() reads from its metadata)."""
    key = keyring.decrypting(key_id, namespace)
    if key is None:
        known = ", ".join(keyring.known())
        raise CodecError(
            f"payload was encrypted with unknown key id {key_id!r} (known: {known}); "
            "this keyring is older than the writer's, from another bundle, or another namespace's"
        )
    if len(data) < NONCE_BYTES + TAG_BYTES:
        raise CodecError(f"encrypted payload (key {key_id!r}) is truncated")
    nonce, sealed = data[:NONCE_BYTES], data[NONCE_BYTES:]
    try:
        plain = _cipher(key).decrypt(nonce, sealed, _aad(key_id, namespace))
    except InvalidTag:
        raise CodecError(f"encrypted payload (key {key_id!r}) failed authentication: tampered or corrupt") from None
    try:
        return Payload.FromString(plain)
    except DecodeError:
        raise CodecError(f"encrypted payload (key {key_id!r}) does not hold a payload") from None


class KeyringFile:
    """The data keys at `path` (codec-keys/keys.json), re-read whenever a file changes
    (watched.WatchedFile: inode, mtime, size):
      - a per-namespace manifest (namespace_keys.py): each listed ring, from its own file, unwrapped
        with its own namespace's KEK; `kek` is a KEK source (kek.FileKeks, hsm.TokenKeks; default:
        the bundle's codec-kek/<ns>.key files). A ring this process holds no KEK for is left shut;
      - a single-KEK KeySet, unwrapped with `kek` (default: codec-kek/kek.key);
      - a pre-v2 plaintext Keyring.

    The bootstrap replaces each file atomically, so a reader never sees half of it; should one
    become unreadable anyway, its last good keys stay in use and `error` says why. Per-namespace
    files are checked at most every `check_every` seconds (a rotation is seen within 0.1 s): a
    check stats the manifest and every ring and KEK file."""

    check_every = 0.1

    def __init__(self, path: str | Path, kek=None):
        self.path = Path(path)
        self.kek = kek
        self.error: str | None = None
        self._file = WatchedFile(self.path, self._parse)
        self._rings: dict[str, WatchedFile] = {}
        self._last: Keys | None = None
        self._parts: tuple = ()
        self._checked: float | None = None
        self._lock = threading.Lock()

    def _single_kek(self):
        kek = self.kek
        if kek is None or hasattr(kek, "single"):
            kek = (kek or self._keks()).single()
            if kek is None:
                raise BundleError(f"{self.path.parent.parent / 'codec-kek' / 'kek.key'} not found: "
                                  "the data keys' key-encryption key (run init first)")
        return kek

    def _keks(self):
        if self.kek is None:
            self.kek = FileKeks(self.path.parent.parent / "codec-kek")
        return self.kek

    def _parse(self, path: Path):
        data = read_optional(path)
        if data is None:
            raise BundleError(f"{path} not found; run generate-certs (or init) first")
        manifest = parse_manifest(data, str(path))
        return manifest if manifest is not None else load_source(path, self._single_kek)

    def current(self) -> Keys:
        if self._checked is not None and time.monotonic() - self._checked < self.check_every:
            return self._last  # per-namespace: each call would otherwise stat every ring and KEK file
        with self._lock:
            errors: list[str] = []
            try:
                source = self._file.current()
            except (OSError, BundleError) as exc:
                if self._file.last is None:
                    if isinstance(exc, FileNotFoundError):
                        raise BundleError(f"{self.path} not found; run generate-certs (or init) first") from None
                    raise exc if isinstance(exc, BundleError) else BundleError(f"{self.path}: {exc}") from None
                source = self._file.last
                errors.append(str(exc))
            if isinstance(source, Manifest):
                source = self._namespaces(source, errors)
                self._checked = time.monotonic() if not errors else None
            else:
                self._last, self._checked = source, None
            self.error = "; ".join(errors) or None
            return source

    def _namespaces(self, manifest: Manifest, errors: list[str]) -> KeySet:
        keks = self._keks()
        if not hasattr(keks, "files"):
            raise BundleError(f"{self.path} lists one ring per namespace: pass a KEK source (kek.FileKeks, "
                              "hsm.TokenKeks), not a single KEK")
        rings = {}
        for ns in manifest.all():
            watched = self._rings.get(ns)
            if watched is None:
                watched = self._rings[ns] = WatchedFile(
                    ring_path(self.path.parent, ns), functools.partial(self._parse_ring, ns), also=keks.files(ns))
            try:
                rings[ns] = watched.current()
            except (OSError, BundleError) as exc:
                if watched.last is not None:
                    rings[ns] = watched.last
                    errors.append(str(exc))
                elif not isinstance(exc, OSError):  # OSError: no ring or no KEK here: not ours to open
                    errors.append(str(exc))
        parts = tuple(rings.items())
        if self._last is None or len(parts) != len(self._parts) or any(
                a[0] != b[0] or a[1] is not b[1] for a, b in zip(parts, self._parts)):
            legacy = rings.pop(LEGACY, None)
            self._last, self._parts = KeySet(rings, legacy), parts
        return self._last

    def _parse_ring(self, namespace: str, path: Path) -> Keyring:
        data = read_optional(path)
        if data is None:
            raise OSError(f"{path} not found")
        return parse_ring(data, namespace, self._keks().kek(namespace), str(path))


class EncryptionCodec(temporalio.converter.PayloadCodec, temporalio.converter.WithSerializationContext):
    """AES-256-GCM payload codec over a Keyring or KeySet, a KeyringFile that follows rotations,
    or key_client.KeyServiceKeys (the rings fetched from the key service: a worker holding no KEK).

    Encodes for the namespace of the SDK's serialization context, else for `namespace`."""

    def __init__(self, keys: Keys | KeyringFile | str | Path, namespace: str | None = None, kek=None):
        if isinstance(keys, (str, Path)):
            keys = KeyringFile(keys, kek)
        self._keys, self.namespace = keys, namespace
        self.keyring()  # fail at construction, not on the first workflow, if the file is bad
        check = getattr(keys, "check", None)  # a remote key source (key_client.KeyServiceKeys)
        if check is not None and namespace:
            check(namespace)

    def with_context(self, context: temporalio.converter.SerializationContext) -> "EncryptionCodec":
        namespace = getattr(context, "namespace", None)
        if not namespace or namespace == self.namespace:
            return self
        bound = copy.copy(self)
        bound.namespace = namespace
        return bound

    def keyring(self) -> Keys:
        return self._keys.current() if isinstance(self._keys, KeyringFile) else self._keys

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        if self.namespace is None:
            raise CodecError("no namespace to bind the payloads to: pass data_converter(keys, namespace=...)")
        keyring = self.keyring()
        return [encrypt(p, keyring, self.namespace) for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        keyring = self.keyring()
        return [decrypt(p, keyring) for p in payloads]


def data_converter(
    keys: Keys | KeyringFile | str | Path,
    base: temporalio.converter.DataConverter | None = None,
    encrypt_failures: bool = True,
    namespace: str | None = None,
    kek=None,
) -> temporalio.converter.DataConverter:
    """The SDK's default data converter (or `base`) with payloads encrypted by EncryptionCodec.

    With `encrypt_failures` (the default) error messages and stack traces are moved into the
    failure's encoded attributes, so they are encrypted too; the SDK's default leaves them in
    plain text in history, where an exception message can easily carry the very data at stake."""
    changes: dict = {"payload_codec": EncryptionCodec(keys, namespace, kek)}
    if encrypt_failures:
        changes["failure_converter_class"] = temporalio.converter.DefaultFailureConverterWithEncodedAttributes
    return dataclasses.replace(base or temporalio.converter.default(), **changes)


def decrypt_all(payloads: Iterable[Payload], keyring: Keys) -> list[Payload]:
    return [decrypt(p, keyring) for p in payloads]


def encrypt_all(payloads: Iterable[Payload], keyring: Keys, namespace: str) -> list[Payload]:
    return [encrypt(p, keyring, namespace) for p in payloads]
