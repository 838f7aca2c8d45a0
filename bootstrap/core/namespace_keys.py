"""Per-namespace custody of the payload data keys: each namespace's ring in a file of its own,
wrapped by a KEK of its own, so that what opens `orders` opens nothing of `payments`.

    codec-keys/keys.json          {"format": "per-namespace-v1", "namespaces": [...], "legacy": bool}
                                  (the manifest: no key material, lists the rings)
    codec-keys/<ns>.json          {"format": "namespace-ring-v1", "namespace": NS, "kek": KEK_ID,
                                   "active": ID, "keys": {ID: base64 of the wrapped key}}
    codec-keys/_legacy.json       the pre-v2 shared ring, if the bundle had one (namespace "")
    codec-kek/<ns>.key            the file backend's KEK of that namespace (pkcs11: a token key
                                  labelled <kek_label>:<ns>, non-extractable)

Each data key is wrapped with its namespace and key id as associated data (codec_keys.wrap_ring),
and the ring names the KEK that wrapped it: a ring copied under another namespace's name, or
opened with another namespace's KEK, is refused. A process loads only the rings it holds a KEK
for; the codec server holds all of them, a worker none (it asks the key service, key_service.py).

Migration from the single-KEK keys.json (format wrapped-v2) is planned by namespace_plan.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import BundleError
from .codec_keys import LEGACY, Keyring, KeyringMismatch, dump_json, parse_json, unwrap_ring, wrap_ring
from .kek import Kek, key_name

MANIFEST_FORMAT = "per-namespace-v1"
RING_FORMAT = "namespace-ring-v1"
# A Temporal namespace name as the codec server accepts it; never "", "." or "..", so never a path.
NAMESPACE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


@dataclass(frozen=True)
class Manifest:
    namespaces: tuple[str, ...]
    legacy: bool = False

    def to_bytes(self) -> bytes:
        return dump_json({"format": MANIFEST_FORMAT, "namespaces": sorted(self.namespaces), "legacy": self.legacy})

    def all(self) -> tuple[str, ...]:
        """Every ring it lists, the pre-v2 one ("") included."""
        return (*self.namespaces, LEGACY) if self.legacy else self.namespaces


def parse_manifest(data: bytes, what: str) -> Manifest | None:
    """The manifest, or None when `data` is another keys.json format (wrapped-v2, pre-v2)."""
    doc = parse_json(data, what)
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        return None
    names, legacy = doc.get("namespaces"), doc.get("legacy", False)
    if set(doc) - {"format", "namespaces", "legacy"} or not isinstance(names, list) or not isinstance(legacy, bool):
        raise BundleError(f'{what}: expected {{"format": "{MANIFEST_FORMAT}", "namespaces": [NS, ...], "legacy": BOOL}}')
    for name in names:
        check_namespace(name, what)
    return Manifest(tuple(dict.fromkeys(names)), legacy)


def check_namespace(name, what: str) -> str:
    if not isinstance(name, str) or not NAMESPACE.match(name):
        raise BundleError(f"{what}: {name!r} is not a namespace name")
    return name


def ring_path(keys_dir: Path, namespace: str) -> Path:
    return Path(keys_dir) / f"{key_name(namespace)}.json"


def ring_bytes(ring: Keyring, namespace: str, kek: Kek) -> bytes:
    return dump_json({"format": RING_FORMAT, "namespace": namespace, "kek": kek.kek_id, **wrap_ring(ring, namespace, kek)})


def ring_header(data: bytes, namespace: str, what: str) -> dict:
    """The ring document, checked to be `namespace`'s ring (nothing unwrapped yet)."""
    doc = parse_json(data, what)
    if not isinstance(doc, dict) or doc.get("format") != RING_FORMAT or set(doc) != {"format", "namespace", "kek", "active", "keys"}:
        raise BundleError(f'{what}: expected {{"format": "{RING_FORMAT}", "namespace": NS, "kek": ID, "active": ID, "keys": {{...}}}}')
    if doc["namespace"] != namespace:
        raise KeyringMismatch(f"{what}: holds the ring of namespace {doc['namespace']!r}, not of {namespace!r}")
    return doc


def parse_ring(data: bytes, namespace: str, kek: Kek | None, what: str) -> Keyring:
    doc = ring_header(data, namespace, what)
    label = "the pre-v2 ring" if namespace == LEGACY else f"namespace {namespace!r}"
    if kek is None:
        raise KeyringMismatch(f"{what}: no key-encryption key of {label} here: this process is not its custodian")
    if doc["kek"] != kek.kek_id:
        raise KeyringMismatch(f"{what}: wrapped by key-encryption key {doc['kek']!r}, but the one of {label} here "
                              f"is {kek.kek_id!r}: wrong backend, token or codec-kek/ file")
    return unwrap_ring({"active": doc["active"], "keys": doc["keys"]}, namespace, kek, what)


def ring_ids(data: bytes | None) -> set[str]:
    """The key ids a ring file lists (plaintext: nothing is unwrapped); empty if unreadable."""
    try:
        doc = parse_json(data or b"{}", "ring")
        return set(doc.get("keys", {})) if isinstance(doc, dict) else set()
    except BundleError:
        return set()


def custody_files(layout) -> list[Path]:
    """The data keys' files a backup must hold: keys.json, and then either the bundle-wide
    codec-kek/kek.key (single KEK, file backend) or each listed ring and its KEK file (none under
    pkcs11: the KEKs are in the token). A ring the manifest lists but the disk lacks is an error."""
    from ..store import read_optional

    files = [layout.codec_keys]
    data = read_optional(layout.codec_keys)
    manifest = parse_manifest(data, str(layout.codec_keys)) if data is not None else None
    if manifest is None:
        return files + ([layout.codec_kek] if layout.codec_kek.exists() else [])
    for ns in manifest.all():
        ring = ring_path(layout.codec_keys.parent, ns)
        if not ring.exists():
            raise BundleError(f"{ring} is missing but {layout.codec_keys} lists it")
        kek = layout.codec_kek.parent / f"{key_name(ns)}.key"
        files += [ring, *([kek] if kek.exists() else [])]
    return files
