"""The encrypted backup archive: every CA and signing key (the token exchange's too), the codec
keys, bundle.yaml and the database dumps, sealed with a passphrase.

Layout (all integers big-endian):

    header  "TBBACKUP" | version u8 | log2(scrypt N) u8 | scrypt r u8 | scrypt p u8 | salt 16
            | check nonce 12 | body nonce 12 | body length u64
    check   the AES-256-GCM tag of an empty message under the header (16 bytes): proves the
            passphrase (and the header) before the body is touched
    body    AES-256-GCM(payload), associated data = header + check

The key is scrypt(passphrase, salt). The payload is a manifest (JSON, 4-byte length first) and
the files' bytes in manifest order; the manifest holds each file's size, sha256 and mode, and the
server CA's fingerprint, which names the cluster the archive belongs to.

Opening checks, in order: length and magic (truncated / not an archive), the check tag (wrong
passphrase), the body tag (tampered), then every file's checksum. Any failure is one BundleError.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import struct
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import PurePosixPath

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from cryptography.hazmat.primitives.serialization import Encoding

from .. import __version__
from ..errors import BundleError

MAGIC = b"TBBACKUP"
VERSION = 1
HEADER = struct.Struct(">8sBBBB16s12s12sQ")
TAG_SIZE = 16
PREFIX_SIZE = HEADER.size + TAG_SIZE
SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P = 15, 8, 1  # 32 MiB of memory, about 0.1 s per derivation
ALLOWED_LOG2_N = range(14, 17)  # at most 64 MiB: a crafted header must not exhaust a small container
# Where archive entries may land: the bundle's private/ and codec-keys/, the token exchange's
# signing key (not the rest of exchange/: its TLS pair is re-issued), bundle.yaml, the dumps.
BUNDLE_PREFIXES = ("private/", "codec-keys/", "codec-kek/")
BUNDLE_NAMES = ("exchange/signing.key",)
CONFIG_NAME = "bundle.yaml"
DUMP_PREFIX = "databases/"
PGDUMP_MAGIC = b"PGDMP"  # pg_dump --format=custom


@dataclass(frozen=True)
class Entry:
    name: str
    data: bytes
    mode: int


@dataclass(frozen=True)
class Archive:
    manifest: dict
    entries: dict[str, Entry]

    @property
    def server_ca_sha256(self) -> str:
        return self.manifest["server_ca_sha256"]

    def bundle_files(self) -> list[Entry]:
        return [e for e in self.entries.values() if e.name.startswith(BUNDLE_PREFIXES) or e.name in BUNDLE_NAMES]

    def dump(self, database: str) -> bytes:
        entry = self.entries.get(f"{DUMP_PREFIX}{database}.dump")
        if entry is None:
            held = ", ".join(self.databases()) or "none"
            raise BundleError(f"the archive holds no dump of database {database!r} (it holds: {held})")
        return entry.data

    def databases(self) -> list[str]:
        return [n[len(DUMP_PREFIX):-len(".dump")] for n in self.entries if n.startswith(DUMP_PREFIX)]


def ca_fingerprint(cert_pem: bytes, what: str) -> str:
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise BundleError(f"{what} is not a PEM certificate") from None
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def check_name(name: str) -> None:
    path = PurePosixPath(name)
    safe = not path.is_absolute() and ".." not in path.parts and str(path) == name
    allowed = name in (CONFIG_NAME, *BUNDLE_NAMES) or name.startswith(BUNDLE_PREFIXES + (DUMP_PREFIX,))
    if not (safe and allowed):
        raise BundleError(f"archive entry {name!r} is outside what a backup may hold")


# --------------------------------------------------------------------------- sealing


def build_manifest(entries: list[Entry], server_ca_sha256: str) -> dict:
    return {
        "format": VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "bundle_version": __version__,
        "server_ca_sha256": server_ca_sha256,
        "files": [
            {"name": e.name, "size": len(e.data), "sha256": hashlib.sha256(e.data).hexdigest(), "mode": e.mode}
            for e in entries
        ],
    }


def seal(entries: list[Entry], passphrase: bytes, log2_n: int = SCRYPT_LOG2_N) -> bytes:
    """The archive bytes for these entries; private/ca.pem among them names the cluster."""
    for entry in entries:
        check_name(entry.name)
    by_name = {e.name: e for e in entries}
    if "private/ca.pem" not in by_name:
        raise BundleError("a backup needs the server CA (private/ca.pem)")
    manifest = build_manifest(entries, ca_fingerprint(by_name["private/ca.pem"].data, "private/ca.pem"))
    encoded = json.dumps(manifest, sort_keys=True).encode()
    payload = struct.pack(">I", len(encoded)) + encoded + b"".join(e.data for e in entries)
    salt, check_nonce, body_nonce = os.urandom(16), os.urandom(12), os.urandom(12)
    key = derive_key(passphrase, salt, log2_n, SCRYPT_R, SCRYPT_P)
    header = HEADER.pack(MAGIC, VERSION, log2_n, SCRYPT_R, SCRYPT_P, salt, check_nonce, body_nonce,
                         len(payload) + TAG_SIZE)
    aead = AESGCM(key)
    check = aead.encrypt(check_nonce, b"", header)
    return header + check + aead.encrypt(body_nonce, payload, header + check)


def derive_key(passphrase: bytes, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=2**log2_n, r=r, p=p).derive(passphrase)


# --------------------------------------------------------------------------- opening


def open_archive(data: bytes, passphrase: bytes, what: str = "the archive") -> Archive:
    header, check, body = _split(data, what)
    _, _, log2_n, r, p, salt, check_nonce, body_nonce, _ = HEADER.unpack(header)
    aead = AESGCM(derive_key(passphrase, salt, log2_n, r, p))
    try:
        aead.decrypt(check_nonce, check, header)
    except InvalidTag:
        raise BundleError(f"{what}: wrong passphrase (or a damaged archive header)") from None
    try:
        payload = aead.decrypt(body_nonce, body, header + check)
    except InvalidTag:
        raise BundleError(f"{what} is damaged or was tampered with: its contents fail authentication") from None
    return _parse_payload(payload, what)


def _split(data: bytes, what: str) -> tuple[bytes, bytes, bytes]:
    if len(data) < PREFIX_SIZE:
        if MAGIC.startswith(data[: len(MAGIC)]) and data:
            raise BundleError(f"{what} is truncated: {len(data)} bytes, shorter than its header")
        raise BundleError(f"{what} is not a temporal-bundle backup archive")
    magic, version, log2_n, r, p, *_, body_len = HEADER.unpack(data[: HEADER.size])
    if magic != MAGIC:
        raise BundleError(f"{what} is not a temporal-bundle backup archive")
    if version != VERSION or log2_n not in ALLOWED_LOG2_N or r != SCRYPT_R or not 1 <= p <= 4:
        raise BundleError(f"{what}: unsupported archive version or parameters (damaged?)")
    expected = PREFIX_SIZE + body_len
    if len(data) < expected:
        raise BundleError(f"{what} is truncated: {len(data)} of {expected} bytes")
    if len(data) > expected:
        raise BundleError(f"{what} is damaged: {len(data) - expected} bytes after its end")
    return data[: HEADER.size], data[HEADER.size:PREFIX_SIZE], data[PREFIX_SIZE:]


def _parse_payload(payload: bytes, what: str) -> Archive:
    try:
        (size,) = struct.unpack(">I", payload[:4])
        manifest = json.loads(payload[4 : 4 + size])
        files = manifest["files"]
        manifest["server_ca_sha256"]
    except (struct.error, ValueError, KeyError, TypeError):
        raise BundleError(f"{what}: unreadable manifest") from None
    offset, entries = 4 + size, {}
    for item in files:
        data = payload[offset : offset + item["size"]]
        offset += item["size"]
        check_name(item["name"])
        if hashlib.sha256(data).hexdigest() != item["sha256"]:
            raise BundleError(f"{what}: checksum mismatch for {item['name']}")
        entries[item["name"]] = Entry(item["name"], data, int(item["mode"]) & 0o777)
    if offset != len(payload):
        raise BundleError(f"{what}: the manifest does not account for every byte")
    return Archive(manifest, entries)


# --------------------------------------------------------------------------- dumps on stdin


def parse_dump_stream(text: str) -> dict[str, bytes]:
    """`dump NAME` lines, each followed by its base64 lines, then `end`: what `make backup`
    pipes from pg_dump in the postgresql container. No `end` line means a dump failed."""
    dumps: dict[str, list[str]] = {}
    current = None
    lines = text.splitlines()
    if not lines or lines[-1] != "end":
        raise BundleError("the database dumps are incomplete (no end marker): pg_dump failed?")
    for line in lines[:-1]:
        if line.startswith("dump "):
            current = line[5:].strip()
            dumps[current] = []
        elif current is None:
            raise BundleError("the database dump stream does not start with a `dump NAME` line")
        else:
            dumps[current].append(line)
    try:
        decoded = {name: base64.b64decode("".join(chunks), validate=True) for name, chunks in dumps.items()}
    except binascii.Error:
        raise BundleError("a database dump in the stream is not valid base64") from None
    for name, data in decoded.items():
        check_dump(name, data)
    return decoded


def check_dump(name: str, data: bytes) -> None:
    if not data.startswith(PGDUMP_MAGIC):
        raise BundleError(f"the dump of database {name!r} is not a pg_dump custom-format archive")
