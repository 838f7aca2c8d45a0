"""The encrypted backup archive (`backup create|verify|restore|dump`): a round trip onto an empty
directory gives back the same CAs, keys and codec keys, so `init` keeps them and old certs and
tokens stay valid; a wrong passphrase, a truncated or tampered archive, or another cluster's
archive is refused with one error line and nothing written."""

from __future__ import annotations

import json
import os
import random
import stat

import pytest

from bootstrap.ops.backup import HEADER, PREFIX_SIZE, open_archive, parse_dump_stream
from bootstrap.errors import BundleError
from bootstrap.core.pki import load_cert, signed_by
from bootstrap.ops.plan import DOMAINS
from bootstrap.core.tokens import verify_token

PASSPHRASE = "correct horse battery staple"
DUMPS = {"temporal": b"PGDMP" + os.urandom(700), "temporal_visibility": b"PGDMP" + os.urandom(300)}


@pytest.fixture(autouse=True)
def passphrase(monkeypatch):
    monkeypatch.delenv("BACKUP_PASSPHRASE_FILE", raising=False)
    monkeypatch.setenv("BACKUP_PASSPHRASE", PASSPHRASE)


@pytest.fixture
def dump_args(tmp_path):
    args = []
    for name, data in DUMPS.items():
        path = tmp_path / f"{name}.dump"
        path.write_bytes(data)
        args += ["--dump", f"{name}={path}"]
    return args


@pytest.fixture
def archive(fresh_bundle, dump_args, tmp_path):
    path = tmp_path / "backups" / "cluster.tbak"
    path.parent.mkdir()
    result = fresh_bundle.run("backup", "create", "--archive", path, *dump_args)
    assert result.code == 0, result.err
    return path


def restore(cli, archive, target, *extra):
    return cli("backup", "restore", "--archive", archive, "--out", target, *extra)


def private_files(root):
    return {str(p.relative_to(root)): (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
            for p in sorted((root / "private").rglob("*")) if p.is_file() and not p.name.startswith(".")}


# --------------------------------------------------------------------------- round trip


def test_create_writes_one_0600_archive_and_says_what_it_holds(fresh_bundle, archive):
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    assert [p.name for p in archive.parent.iterdir()] == ["cluster.tbak"]  # no temp file left
    sealed = archive.read_bytes()
    assert PASSPHRASE.encode() not in sealed
    assert fresh_bundle.layout.ca_key.read_bytes() not in sealed  # encrypted, not merely packed
    names = {f["name"] for f in open_archive(sealed, PASSPHRASE.encode()).manifest["files"]}
    for domain in DOMAINS:
        cert, key = fresh_bundle.layout.domain_ca(domain)
        assert {fresh_bundle.layout.relative(cert), fresh_bundle.layout.relative(key)} <= names
    assert {"private/cluster.json", "codec-keys/keys.json", "codec-kek/kek.key", "bundle.yaml",
            "databases/temporal.dump", "databases/temporal_visibility.dump"} <= names
    assert any(n.startswith("private/jwt/") and n.endswith(".key") for n in names)


def test_manifest_has_a_checksum_for_every_file(archive):
    parsed = open_archive(archive.read_bytes(), PASSPHRASE.encode())
    for item in parsed.manifest["files"]:
        assert len(item["sha256"]) == 64 and item["size"] == len(parsed.entries[item["name"]].data)


def test_round_trip_onto_an_empty_directory_then_init_keeps_every_ca_and_key(cli, fresh_bundle, archive, tmp_path):
    target, config_out = tmp_path / "restored", tmp_path / "host" / "bundle.yaml"
    result = restore(cli, archive, target, "--config-out", config_out)
    assert result.code == 0, result.err
    assert private_files(target) == private_files(fresh_bundle.root)
    assert (target / "codec-keys" / "keys.json").read_bytes() == fresh_bundle.layout.codec_keys.read_bytes()
    assert (target / "codec-kek" / "kek.key").read_bytes() == fresh_bundle.layout.codec_kek.read_bytes()
    assert config_out.read_bytes() == fresh_bundle.config_path.read_bytes()
    assert "BEGIN" not in result.out
    again = restore(cli, archive, target, "--config-out", config_out)  # what `make restore` does on this host
    assert again.code == 0 and f"{config_out}: already as in the archive" in again.out, again  # names and reasons only, never key material
    init = cli("init", "--config", config_out, "--out", target)
    assert init.code == 0, init.err
    assert private_files(target) == private_files(fresh_bundle.root)  # init regenerated no CA or key
    # A client keeps its old certificate and token: both verify against the restored bundle.
    old_cert = load_cert(fresh_bundle.leaf_paths("clients", "client")[0].read_bytes(), "old client cert")
    client_ca = load_cert(target.joinpath("private", "ca-client.pem").read_bytes(), "restored client CA")
    assert signed_by(old_cert, client_ca)
    jwks = json.loads((target / "jwks" / "jwks.json").read_text())
    assert verify_token(fresh_bundle.token("client"), jwks, audience=fresh_bundle.config.jwt.audience)


def test_dump_writes_the_database_dump_to_stdout(archive, capsysbinary):
    from bootstrap.cli import main

    for name, data in DUMPS.items():
        assert main(["backup", "dump", "--archive", str(archive), "--database", name, "--out", "/nonexistent"]) == 0
        assert capsysbinary.readouterr().out == data


def test_verify_and_restore_onto_the_same_cluster_are_accepted(cli, fresh_bundle, archive, snap):
    assert fresh_bundle.run("backup", "verify", "--archive", archive).code == 0
    before = snap(fresh_bundle.root)
    result = fresh_bundle.run("backup", "restore", "--archive", archive)
    assert result.code == 0, result.err
    assert "already as in the archive" in result.out
    assert {k: v for k, v in snap(fresh_bundle.root).items() if k != ".bundle.lock"} == \
           {k: v for k, v in before.items() if k != ".bundle.lock"}


def test_passphrase_from_a_file(cli, fresh_bundle, dump_args, tmp_path, monkeypatch):
    monkeypatch.delenv("BACKUP_PASSPHRASE")
    secret = tmp_path / "passphrase"
    secret.write_text("a file-borne passphrase\n")
    path = tmp_path / "f.tbak"
    assert fresh_bundle.run("backup", "create", "--archive", path, "--passphrase-file", secret, *dump_args).code == 0
    assert open_archive(path.read_bytes(), b"a file-borne passphrase").databases() == list(DUMPS)


def test_dump_stream_from_make_backup_is_parsed_and_checked():
    import base64

    stream = "".join(f"dump {n}\n{base64.encodebytes(d).decode()}" for n, d in DUMPS.items()) + "end\n"
    assert parse_dump_stream(stream) == DUMPS
    with pytest.raises(BundleError, match="incomplete"):
        parse_dump_stream(stream[: stream.rindex("end")])  # pg_dump failed before the end marker
    with pytest.raises(BundleError, match="not a pg_dump"):
        parse_dump_stream("dump temporal\n" + base64.encodebytes(b"oops").decode() + "end\n")


# --------------------------------------------------------------------------- refusals


def assert_refused(cli, archive, target, snap, *fragments):
    before = snap(target)
    line = restore(cli, archive, target).assert_one_error(*fragments)
    assert snap(target) == before, "a refused restore changed the target"
    assert PASSPHRASE not in line
    return line


def test_wrong_passphrase_is_refused(cli, archive, tmp_path, snap, monkeypatch):
    monkeypatch.setenv("BACKUP_PASSPHRASE", "not the passphrase")
    assert_refused(cli, archive, tmp_path / "empty", snap, "wrong passphrase")
    assert not (tmp_path / "empty").exists()


@pytest.mark.parametrize("keep", [0, 5, HEADER.size - 1, PREFIX_SIZE + 10, "half", "minus-one"])
def test_truncated_archive_is_refused(cli, archive, tmp_path, snap, keep):
    data = archive.read_bytes()
    cut = {"half": len(data) // 2, "minus-one": len(data) - 1}.get(keep, keep)
    damaged = tmp_path / "cut.tbak"
    damaged.write_bytes(data[:cut])
    target = tmp_path / "empty"
    assert_refused(cli, damaged, target, snap, str(damaged))
    assert not target.exists()


def flip_positions(size: int) -> list[int]:
    """Every header and check-tag byte, the body's first and last bytes, and a random sample."""
    sample = random.Random(size).sample(range(PREFIX_SIZE, size), 12)
    return sorted(set(range(PREFIX_SIZE)) | {PREFIX_SIZE, size - 1} | set(sample))


def test_one_flipped_byte_anywhere_is_refused(archive):
    data = archive.read_bytes()
    for position in flip_positions(len(data)):
        damaged = bytearray(data)
        damaged[position] ^= 0x01
        with pytest.raises(BundleError):
            open_archive(bytes(damaged), PASSPHRASE.encode())


@pytest.mark.parametrize("where", ["header", "body"])
def test_tampered_archive_is_refused_on_the_command_line(cli, archive, fresh_bundle, tmp_path, snap, where):
    data = bytearray(archive.read_bytes())
    data[{"header": 30, "body": len(data) // 2}[where]] ^= 0x80
    damaged = tmp_path / "tampered.tbak"
    damaged.write_bytes(bytes(data))
    fragment = "wrong passphrase (or a damaged archive header)" if where == "header" else "tampered"
    assert_refused(cli, damaged, fresh_bundle.root, snap, fragment)


def test_extra_bytes_after_the_end_are_refused(cli, archive, tmp_path, snap):
    damaged = tmp_path / "longer.tbak"
    damaged.write_bytes(archive.read_bytes() + b"\0")
    assert_refused(cli, damaged, tmp_path / "empty", snap, "damaged")


def test_archive_from_another_cluster_is_refused(cli, archive, bundle_maker, snap):
    other = bundle_maker()
    line = assert_refused(cli, archive, other.root, snap, "another cluster")
    assert "refusing" in line
    assert other.run("backup", "dump", "--archive", archive, "--database", "temporal").assert_one_error("another cluster")


def test_not_an_archive_is_refused(cli, tmp_path, snap, fresh_bundle):
    garbage = tmp_path / "garbage.tbak"
    garbage.write_bytes(b"PK\x03\x04" + os.urandom(200))
    assert_refused(cli, garbage, fresh_bundle.root, snap, "not a temporal-bundle backup archive")


def test_header_cannot_ask_for_unbounded_scrypt_memory(archive):
    data = bytearray(archive.read_bytes())
    data[9] = 24  # log2(N): 2 GiB of memory at r=8
    with pytest.raises(BundleError, match="unsupported"):
        open_archive(bytes(data), PASSPHRASE.encode())


def test_create_refusals_write_nothing(cli, fresh_bundle, dump_args, archive, tmp_path, monkeypatch, snap):
    before = snap(tmp_path)
    fresh_bundle.run("backup", "create", "--archive", archive, *dump_args).assert_one_error("already exists")
    monkeypatch.setenv("BACKUP_PASSPHRASE", "short")
    fresh_bundle.run("backup", "create", "--archive", tmp_path / "n.tbak", *dump_args).assert_one_error("too short")
    monkeypatch.delenv("BACKUP_PASSPHRASE")
    fresh_bundle.run("backup", "create", "--archive", tmp_path / "n.tbak").assert_one_error("no passphrase")
    monkeypatch.setenv("BACKUP_PASSPHRASE", PASSPHRASE)
    bad = tmp_path / "bad.dump"
    bad.write_bytes(b"pg_dump: error: connection failed")
    fresh_bundle.run("backup", "create", "--archive", tmp_path / "n.tbak", "--dump", f"temporal={bad}") \
        .assert_one_error("not a pg_dump")
    after = snap(tmp_path)
    after.pop("bad.dump")
    assert after == before


@pytest.mark.parametrize("name", ["../etc/passwd", "exchange/server.key", "exchange/signing.key/../x", "jwks/jwks.json"])
def test_entries_outside_the_bundle_are_refused_when_sealing(name):
    from bootstrap.ops.backup import Entry, seal

    with pytest.raises(BundleError, match="outside"):
        seal([Entry(name, b"x", 0o644)], b"p" * 12)


WORKLOAD_CONFIG = ("namespaces: [{name: orders}]\n"
                   "workload_identity:\n  issuers:\n"
                   "    - {name: cluster, issuer: 'https://kubernetes.default.svc', audience: temporal-service}\n")


def test_exchange_key_round_trips_so_live_exchanged_tokens_stay_valid(cli, bundle_maker, dump_args, tmp_path):
    """The exchange's signing key (and, mid-rotation, the next one in private/exchange-keys/) is in
    the archive: after a restore onto an empty directory and `init`, the restored JWKS still
    verifies a token the exchange handed out before the backup, and the exchange keeps its key."""
    from datetime import timedelta

    from bootstrap.ops.plan import load_exchange_key
    from bootstrap.core.tokens import mint_token

    bundle = bundle_maker(WORKLOAD_CONFIG)
    assert bundle.run("rotate", "--kind", "exchange-key").code == 0  # phase published: two exchange keys
    exchange = load_exchange_key(bundle.layout)
    live = mint_token(exchange, role="workload", permissions=["orders:write"], issuer=bundle.config.jwt.issuer,
                      audience=bundle.config.jwt.audience, lifetime=timedelta(minutes=10),
                      subject="cluster:system:serviceaccount:orders:worker")
    path = tmp_path / "wi.tbak"
    assert bundle.run("backup", "create", "--archive", path, *dump_args).code == 0
    names = {f["name"] for f in open_archive(path.read_bytes(), PASSPHRASE.encode()).manifest["files"]}
    assert "exchange/signing.key" in names and "exchange/server.key" not in names
    assert any(n.startswith("private/exchange-keys/") for n in names)

    target = tmp_path / "restored"
    assert restore(cli, path, target).code == 0
    assert cli("init", "--config", bundle.config_path, "--out", target).code == 0
    restored = target / "exchange" / "signing.key"
    assert restored.read_bytes() == bundle.layout.exchange_signing_key.read_bytes()
    assert stat.S_IMODE(restored.stat().st_mode) == 0o600
    assert private_files(target) == private_files(bundle.root)  # the rotation's next key and state too
    jwks = json.loads((target / "jwks" / "jwks.json").read_text())
    assert {k["kid"] for k in jwks["keys"]} == {k["kid"] for k in bundle.jwks()["keys"]}
    assert verify_token(live.encoded, jwks, audience=bundle.config.jwt.audience)
    resumed = cli("rotate", "--config", bundle.config_path, "--out", target)  # the rotation carries on there
    assert resumed.code == 0 and "rotation exchange-key: phase published" in resumed.out, resumed

