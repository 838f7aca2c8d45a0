"""The codec server started in-process for a cluster of the server tier, payloads as older
releases of the codec wrote them (they must still decrypt, and cannot be passed off as something
else), and the bundle.yaml the codec tests and benchmarks start from."""

from __future__ import annotations

import contextlib
import json
import os
import threading

from temporalio.api.common.v1 import Payload

from bootstrap.core.codec import ENCODING, KEY_ID_HEADER
from bootstrap.core.codec_keys import Keyring
from bootstrap.core.config import load_config
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
