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
server CA's fingerprint. The cluster an archive belongs to is the fingerprint computed from its
own private/ca.pem: the manifest's copy must agree, it is never trusted alone.

Opening checks, in order: length and magic (truncated / not an archive), the check tag (wrong
passphrase), the body tag (tampered), the manifest's schema (strict JSON, known keys and types,
safe unique names, sizes), every file's checksum, the server CA, then that each CA key is its
certificate's. Any failure is one BundleError.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import stat
import struct
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from cryptography.hazmat.primitives.serialization import Encoding

from .. import __version__
from ..core.hsm import is_reference
from ..core.pki import keys_match, load_cert, load_private_key
from ..errors import BundleError
from ..store import Action, Layout, Skip, Write, check_plain_path, read_optional
from .plan import DOMAINS

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
DUMP_NAME = re.compile(r"databases/[^/]+\.dump")
SERVER_CA = "private/ca.pem"  # its fingerprint names the cluster an archive belongs to
MANIFEST_TYPES = {"format": int, "created": str, "bundle_version": str, "server_ca_sha256": str, "files": list}
FILE_TYPES = {"name": str, "size": int, "sha256": str, "mode": int}
CA_CERT = re.compile(r"private/ca(-[a-z0-9-]+)?\.pem")  # every domain's CA, current and next
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
MAX_TEXT = 1024  # characters in a name or any other text field
PGDUMP_MAGIC = b"PGDMP"  # pg_dump --format=custom
CONFIG_MODE = 0o644


@dataclass(frozen=True)
class Entry:
    name: str
    data: bytes
    mode: int


@dataclass(frozen=True)
class Archive:
    manifest: dict
    entries: dict[str, Entry]
    server_ca_sha256: str  # computed from the archive's private/ca.pem, never taken from the manifest

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
    if SERVER_CA not in by_name:
        raise BundleError(f"a backup needs the server CA ({SERVER_CA})")
    manifest = build_manifest(entries, ca_fingerprint(by_name[SERVER_CA].data, SERVER_CA))
    return seal_manifest(manifest, b"".join(e.data for e in entries), passphrase, log2_n)


def seal_manifest(manifest: Any, files: bytes, passphrase: bytes, log2_n: int = SCRYPT_LOG2_N) -> bytes:
    """The archive for this manifest and the files' bytes, unchecked (tests seal crafted ones)."""
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
    manifest, offset = _read_manifest(payload, what)
    try:
        check_manifest(manifest, len(payload) - offset)
    except BundleError as exc:
        raise BundleError(f"{what}: invalid manifest: {exc}") from None
    entries = {}
    for item in manifest["files"]:
        data = payload[offset : offset + item["size"]]
        offset += item["size"]
        if hashlib.sha256(data).hexdigest() != item["sha256"]:
            raise BundleError(f"{what}: checksum mismatch for {item['name']}")
        entries[item["name"]] = Entry(item["name"], data, item["mode"] & 0o777)
    server_ca = _server_ca_of(manifest, entries, what)
    _check_ca_keys(entries, what)
    return Archive(manifest, entries, server_ca)


def _read_manifest(payload: bytes, what: str) -> tuple[Any, int]:
    """The manifest's JSON (strict: no NaN, no key twice) and where the files' bytes start."""
    if len(payload) < 4 or struct.unpack(">I", payload[:4])[0] > len(payload) - 4:
        raise BundleError(f"{what}: unreadable manifest (its length is past the end)")
    end = 4 + struct.unpack(">I", payload[:4])[0]
    try:
        return json.loads(payload[4:end], object_pairs_hook=_unique_keys, parse_constant=_no_constant), end
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser's stack
        raise BundleError(f"{what}: unreadable manifest (not strict JSON)") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    if len({key for key, _ in pairs}) != len(pairs):
        raise ValueError("a key appears twice")
    return dict(pairs)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def check_manifest(manifest: Any, files_size: int) -> None:
    """The manifest's schema, checked before any of it is used: exactly the known keys, each of
    its type; names relative, normal, printable, unique and where a backup may hold files; sizes
    that add up to the bytes that follow. Raises BundleError saying what is wrong."""
    _check_keys(manifest, MANIFEST_TYPES, "the manifest")
    if manifest["format"] != VERSION:
        raise BundleError(f"format {manifest['format']} (this bundle reads {VERSION})")
    _check_sha256(manifest["server_ca_sha256"], "server_ca_sha256")
    names: set[str] = set()
    for index, item in enumerate(manifest["files"]):
        _check_file(item, f"files[{index}]")
        if item["name"] in names:
            raise BundleError(f"files[{index}]: {item['name']!r} is listed twice")
        names.add(item["name"])
    _check_tree(names)
    if SERVER_CA not in names:
        raise BundleError(f"it lists no server CA ({SERVER_CA}), which names the cluster")
    if sum(item["size"] for item in manifest["files"]) != files_size:
        raise BundleError("its sizes do not account for every byte of the archive")


def _check_keys(value: Any, types: dict[str, type], where: str) -> None:
    if not isinstance(value, dict):
        raise BundleError(f"{where} is a {type(value).__name__}, not a mapping")
    if set(value) != set(types):
        unknown, missing = sorted(set(value) - set(types)), sorted(set(types) - set(value))
        shown = [key[:40] for key in unknown[:3]] + (["..."] if len(unknown) > 3 else [])
        raise BundleError(f"{where}: unknown keys {shown}, missing keys {missing}")
    for key, expected in types.items():
        # bool is an int in Python, never in a manifest
        if not isinstance(value[key], expected) or isinstance(value[key], bool):
            raise BundleError(f"{where}: {key} is a {type(value[key]).__name__}, not a {expected.__name__}")
        if isinstance(value[key], str) and len(value[key]) > MAX_TEXT:
            raise BundleError(f"{where}: {key} is longer than {MAX_TEXT} characters")


def _check_file(item: Any, where: str) -> None:
    _check_keys(item, FILE_TYPES, where)
    _check_sha256(item["sha256"], f"{where}: sha256")
    if item["size"] < 0:
        raise BundleError(f"{where}: size {item['size']} is negative")
    if not 0 <= item["mode"] <= 0o7777:
        raise BundleError(f"{where}: mode {item['mode']} is not a file mode")
    name = item["name"]
    if not name.isprintable():  # NUL, control characters, lone surrogates from JSON escapes
        raise BundleError(f"{where}: name {name!r} holds a character that is not printable")
    check_name(name)
    if name.startswith(DUMP_PREFIX) and not DUMP_NAME.fullmatch(name):
        raise BundleError(f"{where}: {name!r} is not {DUMP_PREFIX}NAME.dump")


def _check_sha256(value: str, where: str) -> None:
    if not SHA256_HEX.fullmatch(value):
        raise BundleError(f"{where} is not a sha256 in hex")


def _check_tree(names: set[str]) -> None:
    """No entry is a directory another entry needs (private/jwt as a file and private/jwt/x)."""
    for name in names:
        for parent in PurePosixPath(name).parents:
            if str(parent) in names:
                raise BundleError(f"{str(parent)!r} is a file, and {name!r} needs it to be a directory")


def _server_ca_of(manifest: dict, entries: dict[str, Entry], what: str) -> str:
    """The cluster's name, from the archive's own CA certificate: the manifest only repeats it."""
    computed = ca_fingerprint(entries[SERVER_CA].data, f"{what}: {SERVER_CA}")
    if computed != manifest["server_ca_sha256"]:
        raise BundleError(f"{what}: invalid manifest: it names server CA sha256 {manifest['server_ca_sha256'][:16]}..., "
                          f"the archive's {SERVER_CA} is {computed[:16]}...")
    return computed


def _check_ca_keys(entries: dict[str, Entry], what: str) -> None:
    """Each CA key in the archive must be its certificate's: CA certificates are public (trust/),
    so a crafted archive could pair one cluster's with another's keys. A key kept in a PKCS#11
    token (the file holds its label) is the token's to vouch for."""
    for name, entry in entries.items():
        key = entries.get(name.removesuffix(".pem") + ".key")
        if not CA_CERT.fullmatch(name) or key is None or is_reference(key.data):
            continue
        cert = load_cert(entry.data, f"{what}: {name}")
        if not keys_match(cert, load_private_key(key.data, f"{what}: {key.name}")):
            raise BundleError(f"{what}: {key.name} is not the key of {name}: refusing an archive that mixes them")


# --------------------------------------------------------------------------- what goes in


MIN_PASSPHRASE = 12  # characters, for a new archive; an existing one opens with whatever made it
ARCHIVE_MODE = 0o600


def check_passphrase(passphrase: bytes, source: str, minimum: int) -> None:
    if passphrase_characters(passphrase) < minimum:
        raise BundleError(f"the passphrase from {source} is too short (at least {minimum} characters)")


def passphrase_characters(passphrase: bytes) -> int:
    """Unicode characters after NFC normalization (e + combining accent is one), not bytes; a
    byte that is not UTF-8 counts as one. The key is derived from the bytes as given, so
    archives made before this count still open."""
    return len(unicodedata.normalize("NFC", passphrase.decode("utf-8", errors="replace")))


def archive_entries(layout: Layout, config_path: Path, dumps: dict[str, bytes]) -> list[Entry]:
    """What an archive holds, in its order: bundle.yaml, the bundle's files, the dumps."""
    return [config_entry(config_path)] + bundle_entries(layout) + dump_entries(dumps)


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
    files.append(layout.codec_keys)
    if read_optional(layout.codec_kek) is not None:  # file backend; under pkcs11 the KEK is in the token
        files.append(layout.codec_kek)
    if read_optional(layout.exchange_signing_key) is not None:  # workload_identity: live exchanged tokens name its kid
        files.append(layout.exchange_signing_key)
    return [Entry(layout.relative(p), read_optional(p) or b"", stat.S_IMODE(p.stat().st_mode)) for p in files]


def dump_entries(dumps: dict[str, bytes]) -> list[Entry]:
    return [Entry(f"{DUMP_PREFIX}{name}.dump", data, ARCHIVE_MODE) for name, data in sorted(dumps.items())]


def load_archive(path: Path, passphrase: bytes) -> Archive:
    data = read_optional(path)
    if data is None:
        raise BundleError(f"{path} does not exist")
    return open_archive(data, passphrase, str(path))


def held_in_token(archive: Archive) -> list[str]:
    """keys.backend pkcs11: the CA and signing keys are in the token, the archive has their labels."""
    return [e.name for e in archive.bundle_files() if is_reference(e.data)]


# --------------------------------------------------------------------------- restoring


def check_same_cluster(layout: Layout, archive: Archive) -> None:
    """A bundle that already has a server CA takes back only its own cluster's archive. The server
    CA names the cluster; each other domain CA both hold must match as well, since a server CA
    certificate is public and could front another cluster's keys in a crafted archive."""
    existing = read_optional(layout.ca_cert)
    if existing is None:
        return
    here = ca_fingerprint(existing, str(layout.ca_cert))
    if here != archive.server_ca_sha256:
        raise BundleError(
            f"the archive is from another cluster: its server CA is sha256 {archive.server_ca_sha256[:16]}..., "
            f"this bundle's ({layout.ca_cert}) is {here[:16]}...; refusing to mix them"
        )
    for domain in DOMAINS:
        cert = layout.domain_ca(domain)[0]
        ours, theirs = read_optional(cert), archive.entries.get(layout.relative(cert))
        if ours is not None and theirs is not None and \
                ca_fingerprint(ours, str(cert)) != ca_fingerprint(theirs.data, f"the archive's {theirs.name}"):
            raise BundleError(f"the archive is from another cluster: its {domain} CA differs from this bundle's "
                              f"({cert}), although the server CA is the same; refusing to mix them")


def plan_restore(layout: Layout, archive: Archive) -> list[Action]:
    """Write each bundle file that differs; nothing through a symbolic link under the bundle."""
    actions: list[Action] = []
    for entry in archive.bundle_files():
        path = layout.root / entry.name
        check_plain_path(layout.root, path)
        same = read_optional(path) == entry.data and stat.S_IMODE(path.stat().st_mode) == entry.mode
        actions.append(Skip(path, "already as in the archive") if same else Write(path, entry.data, entry.mode, "restored"))
    return actions


def plan_config(path: Path, archive: Archive) -> Action:
    """bundle.yaml to `path`: the file itself, never where a symbolic link there points."""
    if CONFIG_NAME not in archive.entries:
        raise BundleError("the archive holds no bundle.yaml")
    path = Path(os.path.abspath(path))
    check_plain_path(path.parent, path)
    data = archive.entries[CONFIG_NAME].data
    if read_optional(path) == data:
        return Skip(path, "already as in the archive")
    return Write(path, data, CONFIG_MODE, "restored")


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
