"""Planning per-namespace custody (namespace_keys.py): create, grow, rotate, move between backends,
and migrate a single-KEK keys.json, each as a list of atomic writes.

The migration is resumable and idempotent: each namespace's KEK is written before its ring, every
ring before the manifest that replaces the old keys.json, and the bundle-wide KEK is dropped only
after the manifest; a run killed anywhere leaves files a re-run recognises ("already migrated,
skipped") and finishes. Data keys keep their ids and bytes, so every payload already written
still opens; only what wraps them changes.
"""

from __future__ import annotations

from datetime import datetime

from ..errors import BundleError
from .codec_keys import (FORMAT, LEGACY, Keyring, KeySet, KeyringMismatch, parse_json, plan_rotation as plan_single_rotation,
                         plan_single_kek_keys)
from .kek import Kek
from .namespace_keys import Manifest, parse_manifest, ring_bytes, ring_header, ring_ids, ring_path, parse_ring
from ..store import KEY_MODE, Action, Delete, Layout, Skip, Write, read_optional


class Custody:
    """What the bootstrap holds to plan the data keys: this backend's per-namespace KEKs (`keks`:
    kek.FileKeks or hsm.TokenKeks), the bundle-wide KEK a not yet migrated keys.json is wrapped
    by (`single`, with the writes that create it), and for a bundle moved from `file` to `pkcs11`
    the file KEKs its rings are still wrapped by (`previous`).

    codec_keys.plan_codec_keys and plan_rotation hand over to `plan` and `rotate`."""

    def __init__(self, keks, single: Kek | None = None, previous=None, old_keks: tuple[Kek, ...] = ()):
        self.keks, self.single, self.previous = keks, single, previous
        self.old_keks = tuple(k for k in (single, *old_keks) if k is not None)
        self.kek_id = getattr(single, "kek_id", "")

    # ---- what codec_keys hands over

    def plan(self, layout: Layout, force: bool, now: datetime, namespaces, previous: Kek | None = None) -> list[Action]:
        manifest = read_manifest(layout)
        if manifest is None and self.single is None and read_optional(layout.codec_keys) is None:
            manifest = Manifest(())  # a new bundle: per-namespace custody from the start
        if manifest is None:
            if self.single is None:
                raise BundleError(f"{layout.codec_keys}: no key-encryption key for the single-KEK keys.json")
            rings = sorted(p.name for p in layout.codec_keys.parent.glob("*.json") if p != layout.codec_keys)
            if force and rings:  # --force would write a single-KEK keys.json beside them: they would open no more
                raise BundleError(f"{layout.codec_keys} is not the manifest of the rings beside it ({', '.join(rings)}): "
                                  "restore it from your backup, or finish a migration with migrate-codec-keys; "
                                  "refusing --force")
            return plan_single_kek_keys(layout, force, now, namespaces, self.single, previous)
        return plan_rings(layout, self, force, now, namespaces, manifest, None)

    def rotate(self, layout: Layout, now: datetime, namespaces=None) -> tuple[list[Action], str]:
        manifest = read_manifest(layout)
        if manifest is None:
            action, message = plan_single_rotation(layout, now, self.single, namespaces)
            return [action], message
        names = tuple(namespaces or manifest.namespaces)
        actions, done = [], []
        for ns in names:
            found = existing_ring(layout, self, ns)
            if found is None or ns not in manifest.namespaces:
                raise BundleError(f"namespace {ns!r} has no data keys; add it to bundle.yaml and run init")
            ring, kek, _ = found
            new = ring.rotated(now)
            actions.append(Write(ring_path(layout.codec_keys.parent, ns), ring_bytes(new, ns, kek), KEY_MODE,
                                 f"new active data key for {ns}"))
            done.append(f"{ns}: {new.active}")
        return actions, f"new active data key per namespace ({', '.join(done)}); older keys kept for decoding"

    def migrate(self, layout: Layout, now: datetime, namespaces) -> list[Action]:
        """keys.json (single KEK, or the pre-v2 plaintext ring) -> one ring and one KEK per namespace."""
        data = read_optional(layout.codec_keys)
        if data is None:
            raise BundleError(f"{layout.codec_keys} not found: nothing to migrate (run init first)")
        manifest = parse_manifest(data, str(layout.codec_keys))
        if manifest is not None:
            actions = plan_rings(layout, self, False, now, namespaces, manifest, None)
            actions = [Skip(a.path, "already migrated, skipped") if isinstance(a, Skip) else a for a in actions]
        else:
            actions = plan_rings(layout, self, False, now, namespaces, Manifest(()), self.old_keyset(layout, data))
        single = getattr(self.keks, "directory", None)
        if single is not None and not any(isinstance(a, Delete) and a.path == single / "kek.key" for a in actions):
            actions.append(Skip(single / "kek.key", "already removed, skipped"))
        return actions

    def retire_single(self, layout: Layout) -> str | None:
        """After the migration's writes, under pkcs11: the bundle-wide token KEK (`<kek_label>`)
        destroyed, once keys.json is the manifest and no listed ring is wrapped by it; a re-run
        finds it gone ("already destroyed, skipped"). None under the file backend (its kek.key
        is the plan's last Delete)."""
        label = getattr(self.keks, "base_label", None)
        if label is None:
            return None
        kek = self.keks.single()
        if kek is None:
            return f"token key {label!r}: already destroyed, skipped"
        manifest = read_manifest(layout)
        if manifest is None:
            raise BundleError(f"{layout.codec_keys} is not migrated yet: token key {label!r} kept")
        for ns in manifest.all():
            path = ring_path(layout.codec_keys.parent, ns)
            data = read_optional(path)
            if data is None or ring_header(data, ns, str(path))["kek"] == kek.kek_id:
                raise BundleError(f"{path} is missing or still wrapped by token key {label!r}: the key is kept")
        kek.destroy()
        return f"destroyed token key {label!r}: the bundle-wide KEK wraps nothing any more"

    def old_keyset(self, layout: Layout, data: bytes) -> KeySet:
        what = str(layout.codec_keys)
        doc = parse_json(data, what)
        if isinstance(doc, dict) and set(doc) == {"active", "keys"}:
            return KeySet({}, Keyring.parse(data, what))
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise BundleError(f"{what}: neither a single-KEK keys.json nor a per-namespace manifest")
        for kek in self.old_keks:
            if kek.kek_id == doc.get("kek"):
                return KeySet.parse(data, kek, what)
        raise KeyringMismatch(f"{what}: wrapped by key-encryption key {doc.get('kek')!r}, which is neither "
                              "codec-kek/kek.key nor the token's keys.pkcs11.kek_label key: restore it from your backup")


def read_manifest(layout: Layout) -> Manifest | None:
    data = read_optional(layout.codec_keys)
    return None if data is None else parse_manifest(data, str(layout.codec_keys))


def existing_ring(layout: Layout, custody: Custody, ns: str) -> tuple[Keyring, Kek, list[Action]] | None:
    """(ring, the KEK it is to be wrapped by, the writes re-wrapping it) or None if there is none.
    A ring still wrapped by the previous backend's file KEK is re-wrapped under this backend's."""
    path = ring_path(layout.codec_keys.parent, ns)
    data = read_optional(path)
    if data is None:
        return None
    doc = ring_header(data, ns, str(path))
    kek = custody.keks.kek(ns)
    previous = custody.previous.kek(ns) if custody.previous is not None else None
    if previous is not None and doc["kek"] == previous.kek_id and (kek is None or kek.kek_id != doc["kek"]):
        ring = parse_ring(data, ns, previous, str(path))
        actions: list[Action] = []
        if kek is None:
            kek, write = custody.keks.create(ns)
            actions += [write] if write else []
        actions += [Write(path, ring_bytes(ring, ns, kek), KEY_MODE, "re-wrapped under the new backend's key-encryption key"),
                    Delete(custody.previous.path(ns), "dropped: this ring is wrapped by the token's KEK now")]
        return ring, kek, actions
    if kek is None:
        where = " or ".join(map(str, custody.keks.files(ns))) or f"the token key {custody.keks.label(ns)!r}"
        raise BundleError(f"{path} is wrapped by {where}, which is missing: restore it from your backup "
                          "(a new one would make this namespace's data keys unreadable)")
    return parse_ring(data, ns, kek, str(path)), kek, []


def plan_rings(layout: Layout, custody: Custody, force: bool, now: datetime, namespaces, manifest: Manifest,
               old: KeySet | None) -> list[Action]:
    """Every ring the manifest lists, the configured namespaces and (migrating) the old keys.json
    holds; KEK writes first, rings next, the manifest last, then the bundle-wide KEK dropped."""
    keks: list[Action] = []
    rings: list[Action] = []
    names = tuple(dict.fromkeys([*manifest.namespaces, *namespaces, *(old.rings if old else ())]))
    legacy = manifest.legacy or (old is not None and old.legacy is not None)
    for ns in (*names, *((LEGACY,) if legacy else ())):
        carried = (old.legacy if ns == LEGACY else old.rings.get(ns)) if old is not None else None
        rings += _plan_ring(layout, custody, force, now, ns, manifest, carried, keks)
    new_manifest = Manifest(names, legacy)
    data = new_manifest.to_bytes()
    existing = read_optional(layout.codec_keys)
    if existing == data:
        tail: list[Action] = [Skip(layout.codec_keys) if old is None else Skip(layout.codec_keys, "unchanged")]
    else:
        reason = ("migrated: one ring and one key-encryption key per namespace; no key material here any more"
                  if old is not None else "created" if existing is None else f"lists the rings of {', '.join(names)}")
        tail = [Write(layout.codec_keys, data, KEY_MODE, reason)]
    single = getattr(custody.keks, "directory", None)
    if single is not None and (single / "kek.key").exists():
        tail.append(Delete(single / "kek.key", "dropped: the bundle-wide KEK wraps nothing any more"))
    return keks + rings + tail


def _plan_ring(layout, custody, force, now, ns, manifest, carried: Keyring | None, keks: list) -> list[Action]:
    path = ring_path(layout.codec_keys.parent, ns)
    found = existing_ring(layout, custody, ns)
    if found is not None:
        ring, kek, moves = found
        if carried is not None and any(ring.keys.get(k) != v for k, v in carried.keys.items()):
            raise BundleError(f"{path} exists but does not hold the keys.json ring of {ns or 'the pre-v2 ring'}: inspect it")
        if force and ns != LEGACY:
            others = ring_ids(read_optional(path))
            return [Write(path, ring_bytes(ring.rotated(now, others), ns, kek), KEY_MODE, "rotated (--force): old keys kept for decoding")]
        if moves:
            return moves
        reason = "already migrated, skipped" if carried is not None else "already exists, skipped"
        return [*(Skip(kek_file, reason) for kek_file in custody.keks.files(ns) if kek_file.exists()), Skip(path, reason)]
    if ns in manifest.all():
        raise BundleError(f"{path} is missing but {layout.codec_keys} lists it: restore it from your backup")
    kek = custody.keks.kek(ns)
    if kek is None:  # a KEK left by a run killed before its ring was written is used, not replaced
        kek, write = custody.keks.create(ns)
        keks += [write] if write else []
    ring = carried or Keyring.generate(now)
    reason = "migrated from keys.json, re-wrapped under this namespace's own KEK" if carried else "created"
    return [Write(path, ring_bytes(ring, ns, kek), KEY_MODE, reason)]
