"""The encrypted backup archive: every CA and signing key (the token exchange's too), the codec
keys, bundle.yaml and the database dumps, sealed with a passphrase.

An archive is written in format 2 (archive_v2.py over core/archive_stream.py): STREAM-sealed
chunks, so `backup create` seals pg_dump's output as it arrives and `verify`, `restore` and `dump`
read an archive of any size in bounded memory. Archives in format 1 (archive_v1.py, sealed in
memory by earlier versions) still open. What an archive may hold and how its manifest is checked
is archive_manifest.py; what a restore writes is restore_plan.py.

Every refusal happens before anything is written: `verify` and `restore` read and authenticate
the whole archive first (bundle files are small and kept; dumps are only hashed). `dump`, which
hands a database to pg_restore, reads the archive twice through one open file: the first pass
authenticates all of it, the second writes the dump's bytes as they authenticate again.
"""

from __future__ import annotations

import io
import os
import stat
import unicodedata
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

from ..core.archive_stream import MAGIC, SCRYPT_LOG2_N
from ..core.hsm import is_reference
from ..core.namespace_keys import custody_files
from ..errors import BundleError
from ..store import Layout, atomic_file, read_optional
from .archive_manifest import CONFIG_NAME, DUMP_PREFIX, Archive, Entry
from .archive_v1 import VERSION as V1, open_v1
from .archive_v2 import Source, read_archive, seal_archive

MIN_PASSPHRASE = 12  # characters, for a new archive; an existing one opens with whatever made it
ARCHIVE_MODE = 0o600
CONFIG_MODE = 0o644


def check_passphrase(passphrase: bytes, source: str, minimum: int) -> None:
    if passphrase_characters(passphrase) < minimum:
        raise BundleError(f"the passphrase from {source} is too short (at least {minimum} characters)")


def passphrase_characters(passphrase: bytes) -> int:
    """Unicode characters after NFC normalization (e + combining accent is one), not bytes; a
    byte that is not UTF-8 counts as one. The key is derived from the bytes as given, so
    archives made before this count still open."""
    return len(unicodedata.normalize("NFC", passphrase.decode("utf-8", errors="replace")))


# --------------------------------------------------------------------------- what goes in


def archive_entries(layout: Layout, config_path: Path) -> list[Entry]:
    """What an archive holds before its dumps, in its order: bundle.yaml, the bundle's files."""
    return [config_entry(config_path)] + bundle_entries(layout)


def config_entry(path: Path) -> Entry:
    data = read_optional(path)
    if data is None:
        raise BundleError(f"{path} does not exist: the archive must hold the bundle config")
    return Entry(CONFIG_NAME, data, CONFIG_MODE)


def bundle_entries(layout: Layout) -> list[Entry]:
    """Every file under private/ (CAs, signing keys, cluster.json, rotation state) and the codec
    keys; temp and lock files (names starting with a dot) are not state."""
    if read_optional(layout.ca_key) is None or read_optional(layout.ca_cert) is None:
        raise BundleError(f"{layout.ca_cert} and {layout.ca_key} must exist: nothing to back up")
    if read_optional(layout.codec_keys) is None:
        raise BundleError(f"{layout.codec_keys} does not exist: run init first")
    files = sorted(p for p in layout.private.rglob("*") if p.is_file() and not p.name.startswith("."))
    files += custody_files(layout)  # keys.json and the KEK file(s), or each namespace's ring and KEK
    if read_optional(layout.exchange_signing_key) is not None:  # workload_identity: live exchanged tokens name its kid
        files.append(layout.exchange_signing_key)
    return [Entry(layout.relative(p), read_optional(p) or b"", stat.S_IMODE(p.stat().st_mode)) for p in files]


# --------------------------------------------------------------------------- sealing


def create_archive(path: Path, entries: list[Entry], dumps: Iterable[Source], passphrase: bytes,
                   owner: tuple[int, int] | None = None) -> Archive:
    """Seal into a temp file beside `path`, renamed to it once the final chunk is written: a
    failed dump (no end marker, not pg_dump's format) leaves nothing behind."""
    if owner is not None and path.parent.is_dir():
        os.chown(path.parent, *owner)
    with atomic_file(path, ARCHIVE_MODE, owner) as out:
        manifest = seal_archive(out, entries, dumps, passphrase)
    return Archive(manifest, {e.name: e for e in entries}, manifest["server_ca_sha256"])


def seal(entries: list[Entry], passphrase: bytes, log2_n: int = SCRYPT_LOG2_N) -> bytes:
    """The archive bytes for these entries, in memory (tests); dumps are those named databases/."""
    out = io.BytesIO()
    rest = [e for e in entries if not e.name.startswith(DUMP_PREFIX)]
    dumps = [Source(e.name, e.mode, [e.data]) for e in entries if e.name.startswith(DUMP_PREFIX)]
    seal_archive(out, rest, dumps, passphrase, log2_n)
    return out.getvalue()


# --------------------------------------------------------------------------- opening


def open_archive(data: bytes, passphrase: bytes, what: str = "the archive") -> Archive:
    """An archive held in memory, either format, with its dumps' bytes (tests, small archives)."""
    return _read(io.BytesIO(data), passphrase, what, keep_dumps=True)


def load_archive(path: Path, passphrase: bytes) -> Archive:
    """The archive at `path`, authenticated and checked whole; dumps are hashed, not kept."""
    with _open(path) as source:
        return _read(source, passphrase, str(path))


def write_dump(path: Path, passphrase: bytes, database: str, write: Callable[[bytes], object],
               check: Callable[[Archive], None]) -> Archive:
    """One database's dump to `out`, only after the whole archive authenticated and `check` (the
    cluster) passed. Both passes read the same open file; a file changed between them is refused."""
    with _open(path) as source:
        stamp = _stamp(source)
        archive = _read(source, passphrase, str(path))
        check(archive)
        archive.check_database(database)
        if archive.manifest["format"] == V1:
            write(archive.dump(database))
            return archive
        if _stamp(source) != stamp:
            raise BundleError(f"{path} changed while it was read: refusing to restore from it")
        source.seek(0)
        wanted = f"{DUMP_PREFIX}{database}.dump"

        def sink(name: str, piece: bytes) -> None:
            if name == wanted:
                write(piece)

        read_archive(source, passphrase, str(path), sink=sink)
    return archive


def _open(path: Path) -> BinaryIO:
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise BundleError(f"{path} does not exist") from None
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc.strerror or exc}") from None


def _stamp(source: BinaryIO) -> tuple[int, int, int]:
    st = os.fstat(source.fileno())
    return st.st_ino, st.st_size, st.st_mtime_ns


def _read(source: BinaryIO, passphrase: bytes, what: str, keep_dumps: bool = False) -> Archive:
    start = source.read(len(MAGIC) + 1)
    source.seek(0)
    if start[: len(MAGIC)] == MAGIC and start[len(MAGIC):] == bytes([V1]):
        return open_v1(source.read(), passphrase, what)
    return read_archive(source, passphrase, what, keep_dumps=keep_dumps)


def held_in_token(archive: Archive) -> list[str]:
    """keys.backend pkcs11: the CA and signing keys are in the token, the archive has their labels."""
    return [e.name for e in archive.bundle_files() if is_reference(e.data)]
