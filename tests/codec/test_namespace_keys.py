"""The single-KEK keys.json of bundles made before per-namespace custody (kept working until
migrate-codec-keys): one data key ring per namespace, wrapped by one key-encryption key: B's ring
does not hold A's keys, a ring moved under another namespace's name does not unwrap, and a bundle
with the pre-v2 shared plaintext ring migrates without losing a byte of old history."""

from __future__ import annotations

import base64
import json
import stat
import textwrap
from pathlib import Path

import pytest
from temporalio.api.common.v1 import Payload

from bootstrap.cli import main
from bootstrap.core.codec import CodecError, KeyringFile, decrypt, encrypt
from bootstrap.core.codec_keys import Keyring, KeySet, KeyringMismatch
from bootstrap.core.kek import FileKek
from bootstrap.core.pki import utcnow
from tests.support.bundles import make_bundle
from tests.support.codec import legacy_encrypt, single_kek_bundle

CONFIG = textwrap.dedent("""\
    namespaces: [{name: orders}, {name: payments}]
    persistence: {driver: sqlite, sqlite_path: /tmp/unused-ns-keys.db}
    """)
PLAIN = Payload(metadata={"encoding": b"json/plain"}, data=b'"card 4111"')


@pytest.fixture
def bundle(tmp_path):
    made = make_bundle(tmp_path, CONFIG)
    single_kek_bundle(made.root)
    return made.config_path, made.root


def kek(out: Path) -> FileKek:
    return FileKek.load(out / "codec-kek/kek.key")


def keyset(out: Path) -> KeySet:
    return KeySet.parse((out / "codec-keys/keys.json").read_bytes(), kek(out))


def snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_each_namespace_has_its_own_ring_and_no_plaintext_key_is_on_disk(bundle):
    _, out = bundle
    keys = keyset(out)
    assert set(keys.rings) == {"orders", "payments"} and keys.legacy is None
    orders, payments = keys.rings["orders"], keys.rings["payments"]
    assert not set(orders.keys) & set(payments.keys)
    on_disk = (out / "codec-keys/keys.json").read_bytes()
    for ring in (orders, payments):
        for key in ring.keys.values():
            assert base64.b64encode(key) not in on_disk and key not in on_disk
    assert stat.S_IMODE((out / "codec-kek/kek.key").stat().st_mode) == 0o600


def test_a_payload_for_orders_never_opens_with_the_payments_ring(bundle):
    _, out = bundle
    keys = keyset(out)
    sealed = encrypt(PLAIN, keys, "orders")
    assert decrypt(sealed, keys) == PLAIN
    # Relabelled as a payments payload: looked up in the payments ring only, where its key is not.
    moved = Payload(metadata={**sealed.metadata, "encryption-namespace": b"payments"}, data=sealed.data)
    with pytest.raises(CodecError, match="unknown key id"):
        decrypt(moved, keys)
    only_payments = KeySet({"payments": keys.rings["payments"]})
    with pytest.raises(CodecError, match="unknown key id"):
        decrypt(sealed, only_payments)
    # And should both rings hold the same key, the namespace in the AAD still refuses it.
    twin = KeySet({"orders": keys.rings["orders"], "payments": keys.rings["orders"]})
    with pytest.raises(CodecError, match="failed authentication"):
        decrypt(moved, twin)


def test_a_ring_moved_under_another_namespace_is_one_clear_error_and_nothing_is_written(bundle, capsys):
    config, out = bundle
    path = out / "codec-keys/keys.json"
    doc = json.loads(path.read_text())
    doc["namespaces"]["payments"] = doc["namespaces"]["orders"]  # orders' wrapped keys, relabelled
    path.write_text(json.dumps(doc))
    (out / "tokens/client.jwt").unlink()
    before = snapshot(out)
    capsys.readouterr()
    assert main(["init", "--config", str(config), "--out", str(out), "--force"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "namespace 'payments' does not unwrap" in err[0], err
    assert snapshot(out) == before, "nothing may be written"
    assert main(["rotate", "--config", str(config), "--out", str(out), "--kind", "codec-key"]) == 1
    assert "does not unwrap" in capsys.readouterr().err
    assert snapshot(out) == before


def test_another_kek_is_refused_and_nothing_is_written(bundle, capsys):
    config, out = bundle
    (out / "codec-kek/kek.key").write_bytes(FileKek.generate_bytes())
    before = snapshot(out)
    assert main(["generate-certs", "--config", str(config), "--out", str(out)]) == 1
    assert "wrapped by key-encryption key" in capsys.readouterr().err
    assert snapshot(out) == before


def test_a_missing_kek_is_never_silently_replaced(bundle, capsys):
    config, out = bundle
    (out / "codec-kek/kek.key").unlink()
    before = snapshot(out)
    assert main(["generate-certs", "--config", str(config), "--out", str(out)]) == 1
    assert "restore it from your backup" in capsys.readouterr().err
    assert snapshot(out) == before


def test_rotate_one_namespace(bundle, capsys):
    config, out = bundle
    before = keyset(out)
    assert main(["rotate", "--config", str(config), "--out", str(out), "--kind", "codec-key", "--namespace", "orders"]) == 0
    after = keyset(out)
    assert after.rings["payments"] == before.rings["payments"]
    assert after.rings["orders"].active not in before.rings["orders"].keys
    assert set(before.rings["orders"].keys) < set(after.rings["orders"].keys)
    assert main(["rotate", "--config", str(config), "--out", str(out), "--kind", "codec-key", "--namespace", "nope"]) == 1
    assert "namespace 'nope' has no data keys" in capsys.readouterr().err


def test_a_new_namespace_gets_a_ring_and_the_others_stay(bundle):
    config, out = bundle
    before = keyset(out)
    config.write_text(CONFIG.replace("{name: payments}", "{name: payments}, {name: billing}"))
    assert main(["generate-certs", "--config", str(config), "--out", str(out), "-q"]) == 0
    after = keyset(out)
    assert set(after.rings) == {"orders", "payments", "billing"}
    assert {ns: after.rings[ns] for ns in before.rings} == before.rings


def test_a_pre_v2_bundle_migrates_and_its_history_still_decodes(bundle, capsys):
    """The shared plaintext ring of a bundle made before v2: init wraps it into `legacy`, gives
    each namespace a ring, and every payload written with the old ring (bound or not) decodes."""
    config, out = bundle
    old_ring = Keyring.generate(utcnow()).rotated(utcnow())
    keys_path, kek_path = out / "codec-keys/keys.json", out / "codec-kek/kek.key"
    keys_path.write_bytes(old_ring.to_bytes())
    kek_path.unlink()  # such a bundle had no KEK yet
    bound_old = encrypt(PLAIN, old_ring, "orders")
    unbound_old = legacy_encrypt(PLAIN, old_ring)

    # A worker of the not yet migrated bundle keeps running on the plaintext file.
    assert decrypt(bound_old, KeyringFile(keys_path).current()) == PLAIN

    capsys.readouterr()
    assert main(["generate-certs", "--config", str(config), "--out", str(out)]) == 0
    assert "migrated" in capsys.readouterr().out
    migrated = keyset(out)
    assert migrated.legacy == old_ring and set(migrated.rings) == {"orders", "payments"}
    on_disk = keys_path.read_bytes()
    assert all(base64.b64encode(k) not in on_disk for k in old_ring.keys.values()), "the old keys are wrapped now"

    source = KeyringFile(keys_path).current()  # the KEK from the bundle's codec-kek/
    assert decrypt(bound_old, source) == PLAIN and decrypt(unbound_old, source) == PLAIN
    new = encrypt(PLAIN, source, "orders")
    assert new.metadata["encryption-key-id"].decode() == migrated.rings["orders"].active
    # Re-running changes nothing; a codec-key rotation rotates the namespaces' rings, not the legacy one.
    assert main(["generate-certs", "--config", str(config), "--out", str(out), "-q"]) == 0
    assert keys_path.read_bytes() == on_disk
    assert main(["rotate", "--config", str(config), "--out", str(out), "--kind", "codec-key", "-q"]) == 0
    assert keyset(out).legacy == old_ring
    assert decrypt(bound_old, KeyringFile(keys_path).current()) == PLAIN


def test_keyset_parse_rejects_a_foreign_kek_directly(bundle):
    _, out = bundle
    with pytest.raises(KeyringMismatch, match="wrapped by key-encryption key"):
        KeySet.parse((out / "codec-keys/keys.json").read_bytes(), FileKek(FileKek.generate_bytes()))
