"""What a backup archive holds, whichever format sealed it: its entries, the manifest that lists
them (strict schema, checked before any of it is used), and the cluster it belongs to.

The manifest holds each file's name, size, sha256 and mode, and the server CA's fingerprint. The
cluster an archive belongs to is the fingerprint computed from its own private/ca.pem: the
manifest's copy must agree, it is never trusted alone. Each CA key must be its certificate's.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import PurePosixPath
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from .. import __version__
from ..core.hsm import is_reference
from ..core.pki import keys_match, load_cert, load_private_key
from ..errors import BundleError

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


@dataclass(frozen=True)
class Entry:
    name: str
    data: bytes
    mode: int


@dataclass(frozen=True)
class Archive:
    """An opened, checked archive. `entries` holds every bundle file and bundle.yaml; a dump's
    bytes only when the whole archive was read into memory (format 1, or tests)."""
    manifest: dict
    entries: dict[str, Entry]
    server_ca_sha256: str  # computed from the archive's private/ca.pem, never taken from the manifest

    def bundle_files(self) -> list[Entry]:
        return [e for e in self.entries.values() if e.name.startswith(BUNDLE_PREFIXES) or e.name in BUNDLE_NAMES]

    def databases(self) -> list[str]:
        return [f["name"][len(DUMP_PREFIX):-len(".dump")] for f in self.manifest["files"]
                if f["name"].startswith(DUMP_PREFIX)]

    def check_database(self, database: str) -> None:
        if database not in self.databases():
            held = ", ".join(self.databases()) or "none"
            raise BundleError(f"the archive holds no dump of database {database!r} (it holds: {held})")

    def dump(self, database: str) -> bytes:
        self.check_database(database)
        return self.entries[f"{DUMP_PREFIX}{database}.dump"].data


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


def check_entry_name(name: str, where: str) -> None:
    """A name read from an archive: printable, where a backup may hold files, NAME.dump for a dump."""
    if len(name) > MAX_TEXT:
        raise BundleError(f"{where}: name is longer than {MAX_TEXT} characters")
    if not name.isprintable():  # NUL, control characters, lone surrogates from JSON escapes
        raise BundleError(f"{where}: name {name!r} holds a character that is not printable")
    check_name(name)
    if name.startswith(DUMP_PREFIX) and not DUMP_NAME.fullmatch(name):
        raise BundleError(f"{where}: {name!r} is not {DUMP_PREFIX}NAME.dump")


def build_manifest(files: list[dict], server_ca_sha256: str, version: int) -> dict:
    """files: each {name, size, sha256, mode}, in archive order."""
    return {
        "format": version,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "bundle_version": __version__,
        "server_ca_sha256": server_ca_sha256,
        "files": files,
    }


def file_record(name: str, data: bytes, mode: int) -> dict:
    return {"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "mode": mode}


def parse_manifest(encoded: bytes, what: str) -> Any:
    """The manifest's JSON, strict: no NaN, no key twice."""
    try:
        return json.loads(encoded, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser's stack
        raise BundleError(f"{what}: unreadable manifest (not strict JSON)") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    if len({key for key, _ in pairs}) != len(pairs):
        raise ValueError("a key appears twice")
    return dict(pairs)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def check_manifest(manifest: Any, files_size: int, version: int = 1) -> None:
    """The manifest's schema, checked before any of it is used: exactly the known keys, each of
    its type; names relative, normal, printable, unique and where a backup may hold files; sizes
    that add up to the files' bytes. Raises BundleError saying what is wrong."""
    _check_keys(manifest, MANIFEST_TYPES, "the manifest")
    if manifest["format"] != version:
        raise BundleError(f"format {manifest['format']} (this archive's header says {version})")
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
    check_entry_name(item["name"], where)


def _check_sha256(value: str, where: str) -> None:
    if not SHA256_HEX.fullmatch(value):
        raise BundleError(f"{where} is not a sha256 in hex")


def _check_tree(names: set[str]) -> None:
    """No entry is a directory another entry needs (private/jwt as a file and private/jwt/x)."""
    for name in names:
        for parent in PurePosixPath(name).parents:
            if str(parent) in names:
                raise BundleError(f"{str(parent)!r} is a file, and {name!r} needs it to be a directory")


def checked_archive(manifest: dict, entries: dict[str, Entry], what: str) -> Archive:
    """The Archive, once its server CA names it and each CA key is its certificate's."""
    if SERVER_CA not in entries:
        raise BundleError(f"{what}: invalid manifest: it lists no server CA ({SERVER_CA})")
    computed = ca_fingerprint(entries[SERVER_CA].data, f"{what}: {SERVER_CA}")
    if computed != manifest["server_ca_sha256"]:
        raise BundleError(f"{what}: invalid manifest: it names server CA sha256 {manifest['server_ca_sha256'][:16]}..., "
                          f"the archive's {SERVER_CA} is {computed[:16]}...")
    _check_ca_keys(entries, what)
    return Archive(manifest, entries, computed)


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
