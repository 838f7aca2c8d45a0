"""Plan the JWT signing keys, the JWKS that publishes them, and the token exchange's own key."""

from __future__ import annotations

import json
from dataclasses import dataclass

from ...core import backend
from ...core.config import BundleConfig
from ...errors import BundleError
from ...store import CERT_MODE, KEY_MODE, Action, Delete, Layout, Skip, Write, read_optional
from ...core.tokens import SigningKey, jwks_bytes
from .force import FORCE_HINT


@dataclass
class SigningState:
    active: SigningKey
    published: list[SigningKey]
    actions: list[Action]


def load_signing_keys(layout: Layout) -> dict[str, SigningKey]:
    return _load_key_dir(layout.signing_keys, FORCE_HINT)


def _load_key_dir(directory, hint: str) -> dict[str, SigningKey]:
    keys = {}
    if not directory.is_dir():
        return keys
    for path in sorted(directory.glob("*.key")):
        key = SigningKey.from_pem(read_optional(path) or b"", str(path))
        if key.kid != path.stem:
            raise BundleError(f"{path}: file name does not match the key's kid {key.kid}; {hint}")
        keys[key.kid] = key
    return keys


def plan_signing_key(config: BundleConfig, layout: Layout, force: bool, exchange: SigningKey | None = None) -> SigningState:
    active_raw = read_optional(layout.active_kid)
    if force or active_raw is None:
        on_disk = sorted(layout.signing_keys.glob("*.key")) if layout.signing_keys.is_dir() else []
        if on_disk and not force:
            raise BundleError(f"{layout.active_kid} is missing but signing keys exist; {FORCE_HINT}")
        key = SigningKey.generate(config.jwt.algorithm, lambda alg: backend.new_root_key(config, alg))
        reason = "created" if active_raw is None and not on_disk else "replaced (--force)"
        actions: list[Action] = [Delete(p, "dropped (--force)") for p in on_disk if p.stem != key.kid]
        actions += [
            Write(layout.signing_key(key.kid), key.private_pem(), KEY_MODE, reason),
            Write(layout.active_kid, (key.kid + "\n").encode(), CERT_MODE, reason),
        ]
        published = [key]
    else:
        keys = load_published_keys(layout)
        key = active_signing_key(layout, keys)
        actions = [Skip(layout.signing_key(key.kid)), Skip(layout.active_kid)]
        published = list(keys.values())
    actions.append(plan_jwks(layout, published, force, exchange))
    return SigningState(key, published, actions)


def load_published_keys(layout: Layout) -> dict[str, SigningKey]:
    try:
        return load_signing_keys(layout)
    except BundleError as exc:
        message = str(exc)
        raise BundleError(message if FORCE_HINT in message else f"{message}; {FORCE_HINT}") from None


def active_signing_key(layout: Layout, keys: dict[str, SigningKey]) -> SigningKey:
    raw = read_optional(layout.active_kid)
    kid = (raw or b"").decode(errors="replace").strip()
    if kid not in keys:
        raise BundleError(f"{layout.active_kid} names kid {kid!r}, which has no key in {layout.signing_keys}")
    return keys[kid]


def plan_jwks(layout: Layout, published: list[SigningKey], force: bool, exchange: SigningKey | None = None,
              exchange_others: list[SigningKey] | None = None) -> Action:
    """The JWKS of the bundle's signing keys, plus the token exchange's key when it has one and the
    exchange keys a rotation publishes beside it (a rotation of the bundle's keys keeps them all).
    None means: as on disk."""
    exchange = exchange or load_exchange_key(layout)
    others = list(load_exchange_keys(layout).values()) if exchange_others is None else exchange_others
    chosen = published + ([exchange] if exchange else [])
    chosen += [k for k in sorted(others, key=lambda k: k.kid) if k.kid not in {c.kid for c in chosen}]
    wanted = jwks_bytes(chosen)
    existing = read_optional(layout.jwks)
    if existing == wanted:
        return Skip(layout.jwks)
    if existing is not None and not force and not _is_jwks(existing):
        raise BundleError(f"{layout.jwks} is not a JWKS document we wrote; {FORCE_HINT}")
    return Write(layout.jwks, wanted, CERT_MODE, "created" if existing is None else "updated: published keys changed")


def load_exchange_key(layout: Layout) -> SigningKey | None:
    pem = read_optional(layout.exchange_signing_key)
    if pem is None:
        return None
    try:
        return SigningKey.from_pem(pem, str(layout.exchange_signing_key))
    except BundleError as exc:
        raise BundleError(f"{exc}; {FORCE_HINT}") from None


def load_exchange_keys(layout: Layout) -> dict[str, SigningKey]:
    """The exchange keys published beside the one it signs with (mid-rotation)."""
    hint = "inspect it: rotate --kind exchange-key keeps its next and retiring keys there"
    try:
        return _load_key_dir(layout.exchange_keys, hint)
    except BundleError as exc:
        message = str(exc)
        raise BundleError(message if hint in message else f"{message}; {hint}") from None


def plan_exchange_key(config: BundleConfig, layout: Layout, force: bool) -> tuple[SigningKey | None, list[Action]]:
    """The token exchange's own signing key, made once workload_identity is enabled. --force keeps
    it: replacing it would only cut off live workers until they exchange again."""
    existing = load_exchange_key(layout)
    if existing is not None:
        return existing, [Skip(layout.exchange_signing_key)]
    if not config.workload_identity.enabled and not config.oidc.login_exchange:  # Dex logins are exchanged too
        return None, []
    key = SigningKey.generate(config.jwt.algorithm)
    return key, [Write(layout.exchange_signing_key, key.private_pem(), KEY_MODE, "created (token exchange signing key)")]


def _is_jwks(data: bytes) -> bool:
    try:
        doc = json.loads(data)
    except ValueError:
        return False
    return isinstance(doc, dict) and isinstance(doc.get("keys"), list)
