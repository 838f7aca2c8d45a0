"""Per-namespace custody: one ring and one KEK per namespace, so what opens `orders`
opens nothing of `payments`; the migration from the single-KEK keys.json is resumable, idempotent,
says what it did, and every payload written before it still opens; rotation per namespace; the
worker export holds no key material of any namespace."""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
from pathlib import Path

import pytest
from temporalio.api.common.v1 import Payload

from bootstrap.cli import main
from bootstrap.core.codec import CodecError, KeyringFile, decrypt, encrypt
from bootstrap.core.backend import codec_kek
from bootstrap.core.codec_keys import KeySet
from bootstrap.core.config import load_config
from bootstrap.core.kek import FileKek
from bootstrap.core.namespace_keys import parse_ring
from bootstrap.core.pki import utcnow
from bootstrap.store import Layout, apply
from tests.support.bundles import make_bundle
from tests.support.codec import bundle_keys, codec_config, kek_files, single_kek_bundle

CONFIG = codec_config("ns-custody", roles=("system", "worker", "client"),
                      more_roles={"payments-worker": ["payments:write"], "reader": ["orders:read", "payments:read"]})
PLAIN = Payload(metadata={"encoding": b"json/plain"}, data=b'"card 4111"')


def cli(*argv) -> int:
    return main([str(a) for a in argv])


@pytest.fixture
def single(tmp_path):
    """A bundle as init made it before per-namespace custody: one keys.json wrapped by one KEK."""
    made = make_bundle(tmp_path, CONFIG)
    single_kek_bundle(made.root)
    return made.config_path, made.root


def test_init_gives_a_new_bundle_one_ring_and_one_kek_per_namespace(tmp_path, capsys):
    made = make_bundle(tmp_path, CONFIG)
    out = made.root
    manifest = json.loads((out / "codec-keys/keys.json").read_text())
    assert manifest == {"format": "per-namespace-v1", "namespaces": ["orders", "payments"], "legacy": False}
    assert sorted(p.name for p in (out / "codec-keys").iterdir()) == ["keys.json", "orders.json", "payments.json"]
    assert kek_files(out) == ["orders.key", "payments.key"], "no bundle-wide codec-kek/kek.key"
    for key in (out / "codec-kek").iterdir():
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    keys = bundle_keys(out)
    assert set(keys.rings) == {"orders", "payments"} and keys.legacy is None
    with pytest.raises(Exception, match="wrapped by key-encryption key"):
        parse_ring((out / "codec-keys/payments.json").read_bytes(), "payments",
                   FileKek.load(out / "codec-kek/orders.key"), "payments.json")
    # A second init changes nothing; migrate-codec-keys has nothing to do.
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert cli("init", "--config", made.config_path, "--out", out) == 0
    said = migrate(made.config_path, out, capsys)
    assert "already migrated, skipped" in said, said
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_a_single_kek_bundle_keeps_working_until_migrated(single, capsys):
    """init on a bundle made before per-namespace custody keeps its layout (its workers may hold
    keys.json and kek.key), and every payload it wrote opens, before and after the migration."""
    config, out = single
    history = {ns: encrypt(PLAIN, old_keyset(out), ns) for ns in ("orders", "payments")}
    assert cli("init", "--config", config, "--out", out) == 0
    assert json.loads((out / "codec-keys/keys.json").read_text())["format"] == "wrapped-v2"
    assert kek_files(out) == ["kek.key"]
    for ns, sealed in history.items():
        assert decrypt(sealed, bundle_keys(out)) == PLAIN
    migrate(config, out, capsys)
    assert kek_files(out) == ["orders.key", "payments.key"]
    for ns, sealed in history.items():
        assert decrypt(sealed, bundle_keys(out)) == PLAIN


def old_keyset(out: Path) -> KeySet:
    return KeySet.parse((out / "codec-keys/keys.json").read_bytes(), FileKek.load(out / "codec-kek/kek.key"))


def migrate(config, out, capsys) -> str:
    capsys.readouterr()
    assert cli("migrate-codec-keys", "--config", config, "--out", out) == 0
    return capsys.readouterr().out


@pytest.fixture
def migrated(single, capsys):
    config, out = single
    history = {ns: encrypt(PLAIN, old_keyset(out), ns) for ns in ("orders", "payments")}
    migrate(config, out, capsys)
    return config, out, history


def test_migration_gives_each_namespace_its_ring_and_kek_and_old_history_opens(single, capsys):
    config, out = single
    before = old_keyset(out)
    history = {ns: encrypt(PLAIN, before, ns) for ns in ("orders", "payments")}
    said = migrate(config, out, capsys)
    assert "migrated from keys.json" in said and "dropped: the bundle-wide KEK" in said, said
    assert sorted(p.name for p in (out / "codec-keys").iterdir()) == ["keys.json", "orders.json", "payments.json"]
    assert sorted(p.name for p in (out / "codec-kek").iterdir()) == ["orders.key", "payments.key"]
    for key in (out / "codec-kek").iterdir():
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    manifest = json.loads((out / "codec-keys/keys.json").read_text())
    assert manifest == {"format": "per-namespace-v1", "namespaces": ["orders", "payments"], "legacy": False}
    keys = KeyringFile(out / "codec-keys/keys.json").current()
    assert keys.rings == before.rings, "same key ids and bytes: only the wrapping changed"
    for ns, sealed in history.items():
        assert decrypt(sealed, keys) == PLAIN
    # Run again: nothing written, and it says so.
    snapshot = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    again = migrate(config, out, capsys)
    assert again.count("already migrated, skipped") == 5, again  # the manifest, two rings, two KEKs
    assert "codec-kek/kek.key: already removed, skipped" in again, again
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == snapshot


def test_migration_killed_before_it_removed_the_old_kek_removes_it_on_the_next_run(single, capsys):
    config, out = single
    conf, layout = load_config(config), Layout(out)
    custody, _ = codec_kek(conf, layout)
    actions = custody.migrate(layout, utcnow(), ["orders", "payments"])
    assert actions[-1].path.name == "kek.key", "the bundle-wide KEK goes last, after the manifest"
    apply(layout, actions[:-1])
    assert (out / "codec-kek/kek.key").exists()
    said = migrate(config, out, capsys)
    assert "removed codec-kek/kek.key: dropped: the bundle-wide KEK wraps nothing any more" in said, said
    assert kek_files(out) == ["orders.key", "payments.key"]


def test_migration_killed_half_way_is_finished_by_the_next_run(single, capsys):
    """The migration's writes applied up to orders' ring only (a kill -9 there), then run again."""
    config, out = single
    sealed = encrypt(PLAIN, old_keyset(out), "payments")
    conf, layout = load_config(config), Layout(out)
    custody, _ = codec_kek(conf, layout)
    actions = custody.migrate(layout, utcnow(), ["orders", "payments"])
    cut = next(i for i, a in enumerate(actions) if a.path.name == "orders.json") + 1
    apply(layout, actions[:cut])
    assert (out / "codec-kek/payments.key").exists() and not (out / "codec-keys/payments.json").exists()
    kek_payments = (out / "codec-kek/payments.key").read_bytes()
    # Meanwhile a worker on the old keys.json still runs: it is untouched until the manifest.
    assert decrypt(sealed, KeyringFile(out / "codec-keys/keys.json").current()) == PLAIN
    said = migrate(config, out, capsys)
    assert "orders.json: already migrated, skipped" in said and "payments.json: migrated from keys.json" in said, said
    assert (out / "codec-kek/payments.key").read_bytes() == kek_payments, "a KEK left behind is used, not replaced"
    assert decrypt(sealed, KeyringFile(out / "codec-keys/keys.json").current()) == PLAIN


def test_each_kek_opens_only_its_own_namespace(migrated):
    _, out, history = migrated
    orders_kek = FileKek.load(out / "codec-kek/orders.key")
    payments_ring = (out / "codec-keys/payments.json").read_bytes()
    with pytest.raises(Exception, match="wrapped by key-encryption key"):
        parse_ring(payments_ring, "payments", orders_kek, "payments.json")
    # The payments ring renamed to orders.json: refused for what it says it is.
    with pytest.raises(Exception, match="holds the ring of namespace 'payments'"):
        parse_ring(payments_ring, "orders", orders_kek, "orders.json")


def test_a_payments_ring_copied_into_an_orders_worker_opens_nothing(migrated, tmp_path):
    """An orders worker given local keys: its ring and its KEK. A copy of payments' ring (even
    listed in its manifest) stays shut: it holds no KEK for it."""
    _, out, history = migrated
    worker = tmp_path / "worker"
    (worker / "codec-keys").mkdir(parents=True), (worker / "codec-kek").mkdir()
    shutil.copy(out / "codec-keys/orders.json", worker / "codec-keys")
    shutil.copy(out / "codec-kek/orders.key", worker / "codec-kek")
    shutil.copy(out / "codec-keys/payments.json", worker / "codec-keys")  # the attack
    (worker / "codec-keys/keys.json").write_bytes((out / "codec-keys/keys.json").read_bytes())
    keys = KeyringFile(worker / "codec-keys/keys.json").current()
    assert set(keys.rings) == {"orders"}
    assert decrypt(history["orders"], keys) == PLAIN
    with pytest.raises(CodecError, match="unknown key id"):
        decrypt(history["payments"], keys)
    # And its own KEK over the payments ring under the orders name: refused, the last good kept.
    source = KeyringFile(worker / "codec-keys/keys.json")
    source.current()
    os.replace(worker / "codec-keys/payments.json", worker / "codec-keys/orders.json")
    time.sleep(KeyringFile.check_every + 0.05)
    assert set(source.current().rings) == {"orders"} and "holds the ring of namespace 'payments'" in source.error


def test_rotation_per_namespace_and_init_keep_custody(migrated, capsys):
    config, out, history = migrated
    payments_before = (out / "codec-keys/payments.json").read_bytes()
    source = KeyringFile(out / "codec-keys/keys.json")
    before = source.current()
    assert cli("rotate", "--config", config, "--out", out, "--kind", "codec-key", "--namespace", "orders") == 0
    time.sleep(KeyringFile.check_every + 0.05)
    after = source.current()  # re-read without a restart, within check_every
    assert after.rings["orders"].active not in before.rings["orders"].keys
    assert set(before.rings["orders"].keys) < set(after.rings["orders"].keys)
    assert (out / "codec-keys/payments.json").read_bytes() == payments_before
    assert decrypt(history["orders"], after) == PLAIN
    assert cli("rotate", "--config", config, "--out", out, "--kind", "codec-key", "--namespace", "nope") == 1
    # init keeps the layout; a new namespace gets its own ring and KEK.
    Path(config).write_text(CONFIG.replace("{name: payments}", "{name: payments}, {name: billing}"))
    capsys.readouterr()
    assert cli("init", "--config", config, "--out", out) == 0
    assert (out / "codec-kek/billing.key").exists() and not (out / "codec-kek/kek.key").exists()
    keys = KeyringFile(out / "codec-keys/keys.json").current()
    assert set(keys.rings) == {"orders", "payments", "billing"} and decrypt(history["payments"], keys) == PLAIN


def test_a_missing_namespace_kek_is_one_error_and_never_replaced(migrated, capsys):
    config, out, _ = migrated
    (out / "codec-kek/payments.key").unlink()
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert cli("generate-certs", "--config", config, "--out", out) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "payments.key, which is missing: restore it from your backup" in err[0], err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_worker_export_holds_no_ring_and_no_kek(migrated, tmp_path):
    config, out, _ = migrated
    dest = tmp_path / "export"
    assert cli("export-role", "--config", config, "--out", out, "--role", "worker", "--dest", dest, "-q") == 0
    names = sorted(p.name for p in dest.rglob("*") if p.is_file())
    assert names == ["ca.pem", "key-service.json", "worker.jwt", "worker.key", "worker.pem"]
    doc = json.loads((dest / "key-service.json").read_text())
    assert doc["namespaces"] == ["orders"] and doc["url"].endswith("/v1/keys")
    secrets = [p.read_bytes() for p in (out / "codec-kek").iterdir()] + [p.read_bytes() for p in (out / "codec-keys").iterdir()]
    for path in dest.rglob("*"):
        data = path.read_bytes()
        assert not any(s in data for s in secrets), f"{path.name} holds codec material"
        assert b"namespace-ring" not in data and b"wrapped-v2" not in data
    reader = tmp_path / "reader"
    assert cli("export-role", "--config", config, "--out", out, "--role", "reader", "--dest", reader, "-q") == 0
    assert not (reader / "key-service.json").exists(), "read is not enough to encrypt"
    assert cli("export-role", "--config", config, "--out", out, "--role", "nope", "--dest", reader) == 1


def test_a_backup_holds_every_namespace_ring_and_kek(migrated):
    from bootstrap.ops.backup import bundle_entries

    _, out, _ = migrated
    names = {e.name for e in bundle_entries(Layout(out))}
    assert {"codec-keys/keys.json", "codec-keys/orders.json", "codec-keys/payments.json",
            "codec-kek/orders.key", "codec-kek/payments.key"} <= names
    (out / "codec-keys/payments.json").unlink()
    with pytest.raises(Exception, match="payments.json is missing"):
        bundle_entries(Layout(out))


def test_kubernetes_export_gives_the_rings_and_keks_to_the_codec_server_only(tmp_path, capsys):
    import base64

    import yaml

    made = make_bundle(tmp_path, CONFIG.replace("persistence: {driver: sqlite, sqlite_path: /tmp/unused-ns-custody.db}",
                                                "persistence: {driver: postgres}"))
    config, out, dest = made.config_path, made.root, tmp_path / "helm"
    assert cli("migrate-codec-keys", "--config", config, "--out", out, "-q") == 0
    assert cli("export-helm", "--config", config, "--out", out, "--dest", dest, "-q") == 0
    secrets = {p.read_bytes() for d in ("codec-kek", "codec-keys") for p in (out / d).iterdir() if p.name != "keys.json"}
    holders = {}
    for path in (dest / "secrets").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            for key, value in ((doc or {}).get("data") or {}).items():
                if base64.b64decode(value) in secrets:
                    holders.setdefault(doc["metadata"]["name"], set()).add(key)
    assert len(holders) == 1, f"only the codec server's Secret may hold rings or KEKs: {holders}"
    [held] = holders.values()
    assert held == {"codec-keys-orders.json", "codec-keys-payments.json", "codec-kek-orders.key", "codec-kek-payments.key"}


def test_a_pre_v2_ring_migrates_to_a_ring_only_the_codec_server_holds(single, capsys, tmp_path):
    """A bundle still on the pre-v2 shared plaintext ring: its ring becomes _legacy.json under a
    KEK of its own; payloads written with it (bound or not) still open; no worker export has it."""
    from tests.support.codec import legacy_encrypt

    config, out = single
    old_ring = KeySet({}).with_namespaces(["x"], utcnow()).rings["x"]
    (out / "codec-keys/keys.json").write_bytes(old_ring.to_bytes())
    (out / "codec-kek/kek.key").unlink()
    bound, unbound = encrypt(PLAIN, old_ring, "orders"), legacy_encrypt(PLAIN, old_ring)
    said = migrate(config, out, capsys)
    assert "_legacy.json: migrated from keys.json" in said, said
    assert json.loads((out / "codec-keys/keys.json").read_text())["legacy"] is True
    keys = KeyringFile(out / "codec-keys/keys.json").current()
    assert keys.legacy == old_ring and decrypt(bound, keys) == PLAIN and decrypt(unbound, keys) == PLAIN
    assert set(keys.rings) == {"orders", "payments"}
    assert cli("export-role", "--config", config, "--out", out, "--role", "worker", "--dest", tmp_path / "w", "-q") == 0
    legacy_bytes = {(out / "codec-keys/_legacy.json").read_bytes(), (out / "codec-kek/_legacy.key").read_bytes()}
    assert not any(p.read_bytes() in legacy_bytes for p in (tmp_path / "w").iterdir())


def test_a_lost_manifest_is_never_replaced_by_a_single_kek_keys_json(tmp_path, capsys):
    """keys.json of a per-namespace bundle garbled: init refuses, with --force too, and writes
    nothing; the rings and their KEKs stay as they were."""
    made = make_bundle(tmp_path, CONFIG)
    out = made.root
    (out / "codec-keys/keys.json").write_text("{}")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for force in ([], ["--force"]):
        capsys.readouterr()
        assert cli("init", "--config", made.config_path, "--out", out, *force) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), err
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert "is not the manifest of the rings beside it (orders.json, payments.json)" in err[0], err
