"""Archive format 2: the entries as records inside one STREAM-sealed byte stream
(core/archive_stream.py), written and read a piece at a time, so a database dump of any size
passes through without being held.

Plaintext records (integers big-endian):

    file      "F" | name length u16 | name (UTF-8) | mode u16 | segment* | 0 u32
    segment   length u32 (1 .. 1 MiB) | bytes
    manifest  "M" | length u32 | JSON (format 2): every file's name, size, sha256, mode, in order

The manifest comes last because a dump's size and checksum are known only once it has passed.
The stream must end right after it. A reader checks each name before it reads the file, keeps
bundle files (bounded in size), hands dump bytes to a sink or only hashes them, then checks that
the manifest lists exactly the files it read.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from ..core.archive_stream import CHUNK_LOG2, SCRYPT_LOG2_N, Sealer, open_stream
from ..errors import BundleError
from .archive_manifest import (DUMP_PREFIX, SERVER_CA, Archive, Entry, build_manifest, ca_fingerprint, check_manifest,
                               check_entry_name, check_name, checked_archive, parse_manifest)

VERSION = 2
FILE, MANIFEST = b"F", b"M"
U16, U32 = struct.Struct(">H"), struct.Struct(">I")
MAX_SEGMENT = 1 << 20
MAX_MANIFEST = 8 << 20
MAX_KEPT = 64 << 20  # bundle files and bundle.yaml together: a crafted archive must not fill memory
Sink = Callable[[str, bytes], None]


@dataclass(frozen=True)
class Source:
    """A file whose bytes arrive in pieces (a dump from a pipe)."""
    name: str
    mode: int
    pieces: Iterable[bytes]


def seal_archive(out: BinaryIO, entries: list[Entry], dumps: Iterable[Source], passphrase: bytes,
                 log2_n: int = SCRYPT_LOG2_N, chunk_log2: int = CHUNK_LOG2) -> dict:
    """Seal the entries, then the dumps as they arrive, then the manifest; returns the manifest.
    A dump source that raises leaves the stream without its final chunk (it never opens)."""
    for entry in entries:
        check_name(entry.name)
    by_name = {e.name: e for e in entries}
    if SERVER_CA not in by_name:
        raise BundleError(f"a backup needs the server CA ({SERVER_CA})")
    server_ca = ca_fingerprint(by_name[SERVER_CA].data, SERVER_CA)
    sealer = Sealer(out, passphrase, log2_n, chunk_log2)
    files = [_write_file(sealer, e.name, e.mode, [e.data]) for e in entries]
    for dump in dumps:
        check_name(dump.name)
        if not dump.name.startswith(DUMP_PREFIX) or dump.name in {f["name"] for f in files}:
            raise BundleError(f"{dump.name!r} is not a database dump, or a second one of its database")
        files.append(_write_file(sealer, dump.name, dump.mode, dump.pieces))
    manifest = build_manifest(files, server_ca, VERSION)
    _write_manifest(sealer, manifest)
    sealer.close()
    return manifest


def seal_records(out: BinaryIO, files: list[tuple[str, int, bytes]], manifest: Any, passphrase: bytes,
                 log2_n: int = SCRYPT_LOG2_N, chunk_log2: int = CHUNK_LOG2) -> None:
    """A format-2 archive of these (name, mode, bytes) and this manifest (bytes: as they are),
    unchecked (tests craft them)."""
    sealer = Sealer(out, passphrase, log2_n, chunk_log2)
    for name, mode, data in files:
        _write_file(sealer, name, mode, [data])
    _write_manifest(sealer, manifest)
    sealer.close()


def _write_file(sealer: Sealer, name: str, mode: int, pieces: Iterable[bytes]) -> dict:
    encoded = name.encode()
    sealer.write(FILE + U16.pack(len(encoded)) + encoded + U16.pack(mode))
    digest, size = hashlib.sha256(), 0
    for piece in pieces:
        for start in range(0, len(piece), MAX_SEGMENT):
            segment = piece[start : start + MAX_SEGMENT]
            sealer.write(U32.pack(len(segment)))
            sealer.write(segment)
        digest.update(piece)
        size += len(piece)
    sealer.write(U32.pack(0))
    return {"name": name, "size": size, "sha256": digest.hexdigest(), "mode": mode}


def _write_manifest(sealer: Sealer, manifest: Any) -> None:
    encoded = manifest if isinstance(manifest, bytes) else json.dumps(manifest, sort_keys=True).encode()
    sealer.write(MANIFEST + U32.pack(len(encoded)) + encoded)


# --------------------------------------------------------------------------- reading


class Plaintext:
    """read_exact over the authenticated chunks; holds at most one chunk and one record part."""

    def __init__(self, chunks: Iterator[bytes], what: str):
        self._chunks, self._what = chunks, what
        self._buffer, self._offset = b"", 0

    def read(self, size: int) -> bytes:
        parts = []
        while size:
            if self._offset == len(self._buffer):
                self._buffer, self._offset = next(self._chunks, None), 0
                if self._buffer is None:
                    raise BundleError(f"{self._what} is damaged: its contents end inside a record")
                continue
            part = self._buffer[self._offset : self._offset + size]
            self._offset += len(part)
            size -= len(part)
            parts.append(part)
        return b"".join(parts)

    def at_end(self) -> bool:
        """True when nothing follows (every remaining chunk, the final one included, authenticated)."""
        if self._offset < len(self._buffer):
            return False
        for chunk in self._chunks:
            if chunk:
                return False
        return True


def read_archive(source: BinaryIO, passphrase: bytes, what: str, sink: Sink | None = None,
                 keep_dumps: bool = False) -> Archive:
    """Open and check a format-2 archive; dump bytes go to `sink(name, piece)` (kept as entries
    with keep_dumps). Raises BundleError on the first thing wrong; the sink has then seen only
    authenticated bytes, but not necessarily all of them: verify a whole archive before a
    sink acts on what it gets."""
    plain = Plaintext(open_stream(source, passphrase, what), what)
    files, entries, kept = [], {}, 0
    while (kind := plain.read(1)) == FILE:
        name, mode = _read_file_header(plain, what, {f["name"] for f in files})
        keep = keep_dumps or not name.startswith(DUMP_PREFIX)
        record, data = _read_segments(plain, name, mode, None if keep else sink, keep, what)
        files.append(record)
        if keep:
            kept += len(data)
            if kept > MAX_KEPT and not keep_dumps:
                raise BundleError(f"{what}: invalid manifest: its bundle files exceed {MAX_KEPT >> 20} MiB")
            entries[name] = Entry(name, data, mode & 0o777)
    if kind != MANIFEST:
        raise BundleError(f"{what}: unreadable archive contents (record {kind!r})")
    manifest = _read_manifest(plain, what)
    if not plain.at_end():
        raise BundleError(f"{what} is damaged: bytes after its manifest")
    _check_listing(manifest, files, what)
    return checked_archive(manifest, entries, what)


def _read_file_header(plain: Plaintext, what: str, seen: set[str]) -> tuple[str, int]:
    try:
        name = plain.read(U16.unpack(plain.read(2))[0]).decode()
    except UnicodeDecodeError:
        raise BundleError(f"{what}: invalid manifest: an entry's name is not UTF-8") from None
    try:
        check_entry_name(name, "entry")
    except BundleError as exc:
        raise BundleError(f"{what}: invalid manifest: {exc}") from None
    if name in seen:
        raise BundleError(f"{what}: invalid manifest: {name!r} is in the archive twice")
    return name, U16.unpack(plain.read(2))[0]


def _read_segments(plain: Plaintext, name: str, mode: int, sink: Sink | None, keep: bool,
                   what: str) -> tuple[dict, bytes]:
    digest, size, parts = hashlib.sha256(), 0, []
    while length := U32.unpack(plain.read(4))[0]:
        if length > MAX_SEGMENT:
            raise BundleError(f"{what}: unreadable archive contents (a segment of {length} bytes in {name})")
        piece = plain.read(length)
        digest.update(piece)
        size += length
        if keep:
            if size > MAX_KEPT:
                raise BundleError(f"{what}: invalid manifest: {name} exceeds {MAX_KEPT >> 20} MiB")
            parts.append(piece)
        elif sink is not None:
            sink(name, piece)
    return {"name": name, "size": size, "sha256": digest.hexdigest(), "mode": mode}, b"".join(parts)


def _read_manifest(plain: Plaintext, what: str) -> Any:
    length = U32.unpack(plain.read(4))[0]
    if length > MAX_MANIFEST:
        raise BundleError(f"{what}: unreadable manifest (its length is {length} bytes)")
    return parse_manifest(plain.read(length), what)


def _check_listing(manifest: Any, files: list[dict], what: str) -> None:
    try:
        check_manifest(manifest, sum(f["size"] for f in files), VERSION)
    except BundleError as exc:
        raise BundleError(f"{what}: invalid manifest: {exc}") from None
    for listed, found in zip(manifest["files"], files):
        if listed != found:
            raise BundleError(f"{what}: invalid manifest: it lists {listed['name']!r} (size {listed['size']}, "
                              f"sha256 {listed['sha256'][:16]}...), the archive holds {found['name']!r} "
                              f"(size {found['size']}, sha256 {found['sha256'][:16]}...)")
    if len(manifest["files"]) != len(files):
        raise BundleError(f"{what}: invalid manifest: it lists {len(manifest['files'])} files, the archive holds {len(files)}")
