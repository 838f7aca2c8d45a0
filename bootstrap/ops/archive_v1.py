"""Archive format 1: the whole archive sealed as one AES-256-GCM message, built and read in
memory. Archives made before the streaming format (2) still verify and restore through this
reader; the sealing functions stay so tests can craft format-1 archives.

Layout (all integers big-endian):

    header  "TBBACKUP" | version u8 (1) | log2(scrypt N) u8 | scrypt r u8 | scrypt p u8 | salt 16
            | check nonce 12 | body nonce 12 | body length u64
    check   the AES-256-GCM tag of an empty message under the header (16 bytes): proves the
            passphrase (and the header) before the body is touched
    body    AES-256-GCM(payload), associated data = header + check

The key is scrypt(passphrase, salt). The payload is a manifest (JSON, 4-byte length first) and
the files' bytes in manifest order.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..core.archive_stream import ALLOWED_LOG2_N, MAGIC, SCRYPT_LOG2_N, SCRYPT_P, SCRYPT_R, TAG_SIZE, derive_key
from ..errors import BundleError
from .archive_manifest import Archive, Entry, check_manifest, checked_archive, parse_manifest

VERSION = 1
HEADER = struct.Struct(">8sBBBB16s12s12sQ")
PREFIX_SIZE = HEADER.size + TAG_SIZE


def seal_manifest(manifest: Any, files: bytes, passphrase: bytes, log2_n: int = SCRYPT_LOG2_N) -> bytes:
    """A format-1 archive for this manifest and the files' bytes, unchecked (tests seal crafted ones)."""
    encoded = json.dumps(manifest, sort_keys=True).encode()
    return seal_payload(struct.pack(">I", len(encoded)) + encoded + files, passphrase, log2_n)


def seal_payload(payload: bytes, passphrase: bytes, log2_n: int = SCRYPT_LOG2_N) -> bytes:
    salt, check_nonce, body_nonce = os.urandom(16), os.urandom(12), os.urandom(12)
    key = derive_key(passphrase, salt, log2_n, SCRYPT_R, SCRYPT_P)
    header = HEADER.pack(MAGIC, VERSION, log2_n, SCRYPT_R, SCRYPT_P, salt, check_nonce, body_nonce,
                         len(payload) + TAG_SIZE)
    aead = AESGCM(key)
    check = aead.encrypt(check_nonce, b"", header)
    return header + check + aead.encrypt(body_nonce, payload, header + check)


def open_v1(data: bytes, passphrase: bytes, what: str) -> Archive:
    """Checks, in order: length and magic, the check tag (wrong passphrase), the body tag
    (tampered), the manifest's schema, every file's checksum, the server CA, the CA keys."""
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
    if len(payload) < 4 or struct.unpack(">I", payload[:4])[0] > len(payload) - 4:
        raise BundleError(f"{what}: unreadable manifest (its length is past the end)")
    offset = 4 + struct.unpack(">I", payload[:4])[0]
    manifest = parse_manifest(payload[4:offset], what)
    try:
        check_manifest(manifest, len(payload) - offset, VERSION)
    except BundleError as exc:
        raise BundleError(f"{what}: invalid manifest: {exc}") from None
    entries = {}
    for item in manifest["files"]:
        data = payload[offset : offset + item["size"]]
        offset += item["size"]
        if hashlib.sha256(data).hexdigest() != item["sha256"]:
            raise BundleError(f"{what}: checksum mismatch for {item['name']}")
        entries[item["name"]] = Entry(item["name"], data, item["mode"] & 0o777)
    return checked_archive(manifest, entries, what)
