"""STREAM (Hoang, Reyhanitabar, Rogaway, Vizar 2015: "Online authenticated-encryption and its
nonce-reuse misuse-resistance", the nOAE construction) over AES-256-GCM: a byte stream sealed in
chunks, so neither sealing nor opening holds more than one chunk, whatever the stream's size.

Layout (integers big-endian):

    header  "TBBACKUP" | version u8 (2) | log2(scrypt N) u8 | scrypt r u8 | scrypt p u8 | salt 16
            | nonce prefix 7 | log2(chunk size) u8
    check   AES-256-GCM tag of an empty message, nonce prefix | 0 u32 | 2, associated data = header:
            proves the passphrase (and the header) before any chunk is read
    chunks  AES-256-GCM(chunk i), nonce prefix | i u32 | last u8 (1 on the final chunk, else 0),
            associated data = header; every chunk but the last holds exactly chunk-size bytes,
            the last 0 to chunk-size bytes

Each chunk authenticates its own position (the counter) and whether it ends the stream (the flag):
a chunk moved, dropped or repeated, a stream cut at a chunk boundary (its new last chunk was sealed
as not-last), or bytes added after the final chunk all fail authentication. The key is
scrypt(passphrase, salt); the header's parameters are bounded before the derivation runs.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from ..errors import BundleError

MAGIC = b"TBBACKUP"
VERSION = 2
HEADER = struct.Struct(">8sBBBB16s7sB")
TAG_SIZE = 16
PREFIX_SIZE = HEADER.size + TAG_SIZE  # header and check tag: what comes before the first chunk
SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P = 15, 8, 1  # 32 MiB of memory, about 0.1 s per derivation
ALLOWED_LOG2_N = range(14, 17)  # at most 64 MiB: a crafted header must not exhaust a small container
CHUNK_LOG2 = 20  # 1 MiB: per-chunk overhead (a tag, one AES-GCM call) is noise at this size
ALLOWED_CHUNK_LOG2 = range(12, 21)  # a reader holds at most two chunks: 2 MiB
NOT_LAST, LAST, CHECK = 0, 1, 2
MAX_CHUNKS = 2**32


def derive_key(passphrase: bytes, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=2**log2_n, r=r, p=p).derive(passphrase)


def nonce(prefix: bytes, counter: int, flag: int) -> bytes:
    return prefix + struct.pack(">IB", counter, flag)


def check_parameters(version: int, log2_n: int, r: int, p: int) -> bool:
    return version == VERSION and log2_n in ALLOWED_LOG2_N and r == SCRYPT_R and 1 <= p <= 4


class Sealer:
    """Writes the sealed stream to `out` as bytes arrive; close() seals the final chunk. An
    exception before close() leaves a stream without its final chunk, which never opens."""

    def __init__(self, out: BinaryIO, passphrase: bytes, log2_n: int = SCRYPT_LOG2_N, chunk_log2: int = CHUNK_LOG2):
        salt, self._prefix = os.urandom(16), os.urandom(7)
        self._header = HEADER.pack(MAGIC, VERSION, log2_n, SCRYPT_R, SCRYPT_P, salt, self._prefix, chunk_log2)
        self._aead = AESGCM(derive_key(passphrase, salt, log2_n, SCRYPT_R, SCRYPT_P))
        self._out, self._size, self._counter = out, 1 << chunk_log2, 0
        self._pending = bytearray()
        out.write(self._header + self._aead.encrypt(nonce(self._prefix, 0, CHECK), b"", self._header))

    def write(self, data: bytes) -> None:
        self._pending += data
        # Strictly more than a chunk: the last chunk is sealed only by close(), even when full.
        while len(self._pending) > self._size:
            self._seal(bytes(self._pending[: self._size]), NOT_LAST)
            del self._pending[: self._size]

    def close(self) -> None:
        self._seal(bytes(self._pending), LAST)
        self._pending.clear()

    def _seal(self, chunk: bytes, flag: int) -> None:
        if self._counter >= MAX_CHUNKS:
            raise BundleError("the archive is too large for its chunk counter")
        self._out.write(self._aead.encrypt(nonce(self._prefix, self._counter, flag), chunk, self._header))
        self._counter += 1


def read_exact(source: BinaryIO, size: int) -> bytes:
    """Up to `size` bytes: fewer only at the end of the stream (a pipe returns short reads)."""
    parts, missing = [], size
    while missing:
        part = source.read(missing)
        if not part:
            break
        parts.append(part)
        missing -= len(part)
    return b"".join(parts)


def open_stream(source: BinaryIO, passphrase: bytes, what: str) -> Iterator[bytes]:
    """The authenticated plaintext, chunk by chunk. The header and passphrase are checked before
    this returns; each chunk is yielded only once it has authenticated, and the generator raises
    BundleError at the first chunk that does not (or when the final chunk is missing)."""
    header = _read_header(source, what)
    _, _, log2_n, r, p, salt, prefix, chunk_log2 = HEADER.unpack(header)
    aead = AESGCM(derive_key(passphrase, salt, log2_n, r, p))
    check = read_exact(source, TAG_SIZE)
    if len(check) < TAG_SIZE:
        raise BundleError(f"{what} is truncated: it ends inside its header")
    try:
        aead.decrypt(nonce(prefix, 0, CHECK), check, header)
    except InvalidTag:
        raise BundleError(f"{what}: wrong passphrase (or a damaged archive header)") from None
    return _chunks(source, aead, header, prefix, (1 << chunk_log2) + TAG_SIZE, what)


def _read_header(source: BinaryIO, what: str) -> bytes:
    header = read_exact(source, HEADER.size)
    if len(header) < len(MAGIC) or not header.startswith(MAGIC):
        if header and MAGIC.startswith(header):
            raise BundleError(f"{what} is truncated: {len(header)} bytes, shorter than its header")
        raise BundleError(f"{what} is not a temporal-bundle backup archive")
    if len(header) < HEADER.size:
        raise BundleError(f"{what} is truncated: {len(header)} bytes, shorter than its header")
    _, version, log2_n, r, p, _, _, chunk_log2 = HEADER.unpack(header)
    if not check_parameters(version, log2_n, r, p) or chunk_log2 not in ALLOWED_CHUNK_LOG2:
        raise BundleError(f"{what}: unsupported archive version or parameters (damaged?)")
    return header


def _chunks(source: BinaryIO, aead: AESGCM, header: bytes, prefix: bytes, size: int, what: str) -> Iterator[bytes]:
    current, counter = read_exact(source, size), 0
    while True:
        if counter >= MAX_CHUNKS:
            raise BundleError(f"{what} is damaged: more chunks than its counter allows")
        following = read_exact(source, size) if len(current) == size else b""
        if not following:
            yield _open_last(aead, current, nonce(prefix, counter, LAST), nonce(prefix, counter, NOT_LAST), header, what, counter)
            return
        try:
            yield aead.decrypt(nonce(prefix, counter, NOT_LAST), current, header)
        except InvalidTag:
            if _opens(aead, nonce(prefix, counter, LAST), current, header):
                raise BundleError(f"{what} is damaged: bytes after its final chunk") from None
            raise BundleError(f"{what} is damaged or was tampered with: chunk {counter} fails authentication") from None
        current, counter = following, counter + 1


def _open_last(aead: AESGCM, chunk: bytes, last: bytes, not_last: bytes, header: bytes, what: str, counter: int) -> bytes:
    if len(chunk) < TAG_SIZE:
        raise BundleError(f"{what} is truncated: it ends inside chunk {counter}")
    try:
        return aead.decrypt(last, chunk, header)
    except InvalidTag:
        pass
    if _opens(aead, not_last, chunk, header):
        raise BundleError(f"{what} is truncated: it ends after chunk {counter}, before its final chunk")
    raise BundleError(f"{what} is damaged, truncated or was tampered with: chunk {counter} fails authentication")


def _opens(aead: AESGCM, nonce_: bytes, chunk: bytes, header: bytes) -> bool:
    try:
        aead.decrypt(nonce_, chunk, header)
    except InvalidTag:
        return False
    return True
