"""Where the root keys live: the `keys.backend` of bundle.yaml, `file` (default) or `pkcs11`.

Everything that makes a CA key or a JWT signing key, or needs the data keys' KEK, asks here, so
the rest of the code does not know which backend holds them. Under pkcs11 those keys are made and
used inside the token (hsm.py) and the bundle holds only references to them; leaf keys stay files
(they must sit next to the services that use them)."""

from __future__ import annotations

from . import hsm
from ..errors import BundleError
from .kek import FileKek, FileKeks, Kek, plan_file_kek
from .namespace_keys import parse_manifest
from .namespace_plan import Custody
from ..store import Action, Layout, read_optional


def activate(config) -> None:
    """Open the token (pkcs11) so key references in the bundle resolve; every command that loads
    the config calls this once. Bad module, token or PIN: one clear error, before any planning."""
    hsm.activate(session(config) if config.keys.backend == "pkcs11" else None)


def session(config) -> hsm.TokenSession:
    keys = config.keys
    return hsm.open_session(keys.module, keys.token_label, keys.pin_file)


def new_root_key(config, algorithm: str):
    """A new CA or JWT signing key: inside the token under pkcs11, else in memory (written as a file)."""
    if config.keys.backend == "pkcs11":
        return session(config).generate(algorithm)
    from .pki import generate_key

    return generate_key(algorithm)


def codec_kek(config, layout: Layout) -> tuple[Custody, list[Action]]:
    """What wraps the payload data keys (namespace_plan.Custody), and the writes that create the
    bundle-wide KEK if needed: per-namespace KEKs once the bundle has per-namespace custody (its
    keys.json is a manifest) and for a new bundle (no keys.json yet), else the one KEK of a
    single-KEK keys.json made before per-namespace custody (kept until migrate-codec-keys)."""
    keks = _namespace_keks(config, layout)
    previous = FileKeks(layout.codec_kek.parent) if config.keys.backend == "pkcs11" else None
    if migrated(layout) or read_optional(layout.codec_keys) is None:
        return Custody(keks, None, previous), []
    single, actions = single_codec_kek(config, layout)
    return Custody(keks, single, previous, (_file_single(layout),)), actions


def migrated(layout: Layout) -> bool:
    data = read_optional(layout.codec_keys)
    return data is not None and parse_manifest(data, str(layout.codec_keys)) is not None


def _namespace_keks(config, layout: Layout):
    if config.keys.backend != "pkcs11":
        return FileKeks(layout.codec_kek.parent)
    return hsm.TokenKeks(session(config), config.keys.kek_label)


def _file_single(layout: Layout) -> FileKek | None:
    data = read_optional(layout.codec_kek)
    return FileKek(data) if data is not None else None


def single_codec_kek(config, layout: Layout) -> tuple[Kek, list[Action]]:
    """The one KEK of a single-KEK keys.json, and the writes that create it if needed."""
    if config.keys.backend != "pkcs11":
        return plan_file_kek(layout)
    wrapped = b'"wrapped-v2"' in (read_optional(layout.codec_keys) or b"")
    kek = session(config).kek(config.keys.kek_label, create=not wrapped or previous_kek(config, layout) is not None)
    if kek is None:
        raise BundleError(f"PKCS#11 token {config.keys.token_label!r} holds no key labelled {config.keys.kek_label!r}, "
                          f"but {layout.codec_keys} is wrapped by one: wrong token?")
    return kek, []


def previous_kek(config, layout: Layout) -> FileKek | None:
    """A bundle moved from `file` to `pkcs11`: the file KEK its data keys are still wrapped by, so
    init can re-wrap them under the token's KEK (and then delete the file)."""
    if config.keys.backend != "pkcs11" or read_optional(layout.codec_kek) is None:
        return None
    return FileKek.load(layout.codec_kek)


def codec_kek_for_serving(config, layout: Layout):
    """What a running codec server unwraps with; never creates a key: every namespace's KEK
    (FileKeks / TokenKeks) under per-namespace custody, else the single KEK."""
    if migrated(layout):
        return _namespace_keks(config, layout)
    if config.keys.backend != "pkcs11":
        return FileKek.load(layout.codec_kek)
    kek = session(config).kek(config.keys.kek_label, create=False)
    if kek is None:
        raise BundleError(f"PKCS#11 token {config.keys.token_label!r} holds no key labelled {config.keys.kek_label!r}")
    return kek
