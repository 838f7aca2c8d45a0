"""The codec server started in-process for a cluster of the server tier, payloads as older
releases of the codec wrote them (they must still decrypt, and cannot be passed off as something
else), the data keys of a bundle (whatever its custody), a bundle turned back into the single-KEK
layout older releases made, and the bundle.yaml the codec tests and benchmarks start from."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path

from temporalio.api.common.v1 import Payload

from bootstrap.core.codec import ENCODING, KEY_ID_HEADER, KeyringFile
from bootstrap.core.codec_keys import LEGACY, Keyring, KeySet, plan_single_kek_keys
from bootstrap.core.config import load_config
from bootstrap.core.kek import FileKeks, plan_file_kek
from bootstrap.core.namespace_keys import Manifest, parse_manifest, parse_ring, ring_bytes, ring_path
from bootstrap.core.pki import utcnow
from bootstrap.store import KEY_MODE, Layout, Write, apply
from bootstrap.servers.codec import Policy, make_server


# The codec tests' roles: `mixed` is an admin of orders and a reader of payments, `lowest` a reader.
CODEC_ROLES = {
    "system": ["temporal-system:admin"], "worker": ["orders:write"], "client": ["orders:write"],
    "mixed": ["orders:admin", "payments:read"], "lowest": ["orders:read"],
}


def codec_config(name: str, namespaces=("orders", "payments"), roles=tuple(CODEC_ROLES), more_roles=None,
                 network: str | None = None) -> str:
    """A bundle.yaml of `namespaces` and `roles` (names of CODEC_ROLES, then `more_roles`:
    name -> permissions), SQLite at a path nothing opens (/tmp/unused-<name>.db)."""
    permissions = {**{role: CODEC_ROLES[role] for role in roles}, **(more_roles or {})}
    lines = ["namespaces: [" + ", ".join(f"{{name: {ns}}}" for ns in namespaces) + "]", "roles:"]
    lines += [f"  {role}: {{permissions: {json.dumps(granted)}}}" for role, granted in permissions.items()]
    if network is not None:
        lines.append(f"network: {network}")
    lines.append(f"persistence: {{driver: sqlite, sqlite_path: /tmp/unused-{name}.db}}")
    return "\n".join(lines) + "\n"


def bundle_keys(out: Path, keks=None) -> KeySet:
    """Every ring of the bundle at `out`, unwrapped as the codec server does (KeyringFile): one
    ring and one KEK per namespace (what init makes), or a single-KEK keys.json not yet migrated.
    `keks`: hsm.TokenKeks under pkcs11 (default: the bundle's codec-kek/ files)."""
    return KeyringFile(Path(out) / "codec-keys" / "keys.json", keks).current()


def kek_files(out: Path) -> list[str]:
    """The key-encryption key files of the bundle at `out` (codec-kek/), by name."""
    return sorted(p.name for p in (Path(out) / "codec-kek").iterdir()) if (Path(out) / "codec-kek").is_dir() else []


def single_kek_bundle(out: Path, namespaces=("orders", "payments")) -> KeySet:
    """Turn the bundle init made at `out` into one as init made it before per-namespace custody:
    every ring in one codec-keys/keys.json (wrapped-v2) wrapped by the one codec-kek/kek.key,
    written by the planner that still reads such bundles. Returns its key set."""
    layout = Layout(Path(out))
    for directory in (layout.codec_keys.parent, layout.codec_kek.parent):
        for path in directory.iterdir():
            path.unlink()
    kek, actions = plan_file_kek(layout)
    apply(layout, actions + plan_single_kek_keys(layout, False, utcnow(), namespaces, kek))
    return KeySet.parse(layout.codec_keys.read_bytes(), FileKeks(layout.codec_kek.parent).single())


def add_legacy_ring(out: Path) -> Keyring:
    """Give the bundle at `out` (per-namespace custody) the pre-v2 shared ring a migrated old
    bundle keeps for decoding: codec-keys/_legacy.json under a KEK of its own, listed by the
    manifest. Returns that ring (the one already there, if any)."""
    keys_dir = Path(out) / "codec-keys"
    manifest = parse_manifest((keys_dir / "keys.json").read_bytes(), "keys.json")
    keks = FileKeks(Path(out) / "codec-kek")
    if manifest.legacy:
        return parse_ring(ring_path(keys_dir, LEGACY).read_bytes(), LEGACY, keks.kek(LEGACY), "_legacy.json")
    ring = Keyring.generate(utcnow())
    kek, write = keks.create(LEGACY)
    layout = Layout(Path(out))
    apply(layout, [write, Write(ring_path(keys_dir, LEGACY), ring_bytes(ring, LEGACY, kek), KEY_MODE, "legacy"),
                   Write(keys_dir / "keys.json", Manifest(manifest.namespaces, True).to_bytes(), KEY_MODE, "manifest")])
    return ring


def legacy_encrypt(payload: Payload, keyring: Keyring) -> Payload:
    """What encrypt() wrote before payloads were bound to a namespace (associated data without the namespace), verbatim."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key_id, nonce = keyring.active, os.urandom(12)
    sealed = AESGCM(keyring.keys[key_id]).encrypt(nonce, payload.SerializeToString(), ENCODING + b"\x00" + key_id.encode())
    return Payload(metadata={"encoding": ENCODING, KEY_ID_HEADER: key_id.encode()}, data=nonce + sealed)


@contextlib.contextmanager
def in_process_codec_server(cluster):
    config = load_config(cluster.config_path)
    server = make_server(
        "127.0.0.1", 0,
        keys_path=cluster.bundle / "codec-keys" / "keys.json",
        policy=Policy(config.jwt.audience, config.codec.decrypt_role, config.codec.ui_origins),
        jwks_path=cluster.bundle / "jwks" / "jwks.json",
        cert=cluster.bundle / "codec" / "server.pem",
        key=cluster.bundle / "codec" / "server.key",
        audit=False,
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://localhost:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
