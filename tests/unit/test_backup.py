"""The encrypted backup archive (`backup create|verify|restore|dump`): a round trip onto an empty
directory gives back the same CAs, keys and codec keys, so `init` keeps them and old certs and
tokens stay valid; a wrong passphrase, a truncated or tampered archive, or another cluster's
archive is refused with one error line and nothing written."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import random
import stat
import struct

import pytest

from bootstrap.core.archive_stream import HEADER, PREFIX_SIZE
from bootstrap.ops.archive_manifest import ca_fingerprint
from bootstrap.ops.backup import open_archive
from bootstrap.ops.dump_stream import read_dump_stream
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
    assert {"private/cluster.json", "codec-keys/keys.json", "codec-keys/default.json", "codec-kek/default.key", "bundle.yaml",
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
    assert (target / "codec-kek" / "other.key").read_bytes() == (fresh_bundle.root / "codec-kek" / "other.key").read_bytes()
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


def parse_dump_stream(text: str) -> dict[str, bytes]:
    return {s.name[len("databases/"):-len(".dump")]: b"".join(s.pieces) for s in read_dump_stream(io.BytesIO(text.encode()))}


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



# --------------------------------------------------------------------------- crafted archives
# What outside probes of the archive format found: each archive below is sealed with the right
# passphrase, so it reaches the checks after decryption.


def reseal(data: bytes, *, manifest=None, entries=None) -> bytes:
    """The archive re-sealed after `manifest(dict) -> object` and/or `entries(dict) -> dict` changed it."""
    from bootstrap.ops.archive_v2 import seal_records

    opened = open_archive(data, PASSPHRASE.encode())
    files = {name: entry.data for name, entry in opened.entries.items()}
    files = entries(files) if entries else files
    listed = copy.deepcopy(opened.manifest)
    listed["files"] = [{"name": n, "size": len(d), "sha256": hashlib.sha256(d).hexdigest(), "mode": 0o600}
                       for n, d in files.items()]
    listed = manifest(listed) if manifest else listed
    out = io.BytesIO()
    seal_records(out, [(n, 0o600, d) for n, d in files.items()], listed, PASSPHRASE.encode(), log2_n=14)
    return out.getvalue()


def write_archive(tmp_path, data: bytes, name: str = "crafted.tbak"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_the_cluster_check_uses_the_archives_own_ca_not_what_its_manifest_claims(cli, archive, bundle_maker, snap, tmp_path):
    """Cluster B's archive whose manifest names cluster A's server CA fingerprint is still B's."""
    other = bundle_maker()
    theirs = ca_fingerprint(other.layout.ca_cert.read_bytes(), "A's CA")
    crafted = write_archive(tmp_path, reseal(archive.read_bytes(), manifest=lambda m: {**m, "server_ca_sha256": theirs}))
    assert_refused(cli, crafted, other.root, snap)
    other.run("backup", "verify", "--archive", crafted).assert_one_error()


def test_another_clusters_domain_cas_behind_this_clusters_server_ca_are_refused(cli, archive, bundle_maker, snap, tmp_path):
    """The server CA names the cluster, but an archive with cluster A's server CA pair and
    cluster B's client, internode and database CAs must not carry B's CAs onto A."""
    other = bundle_maker()
    theirs = other.layout.ca_cert.read_bytes()

    def swap_ca(files):
        return {**files, "private/ca.pem": theirs, "private/ca.key": other.layout.ca_key.read_bytes()}

    def name_it(manifest):
        return {**manifest, "server_ca_sha256": ca_fingerprint(theirs, "A's CA")}

    crafted = write_archive(tmp_path, reseal(archive.read_bytes(), entries=swap_ca, manifest=name_it))
    assert_refused(cli, crafted, other.root, snap, "another cluster", "client CA")


def tree(root) -> dict[str, tuple]:
    """Like the snap fixture, but links are recorded as links, never followed."""
    found = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(directory, name)
            st = os.lstat(path)
            content = os.readlink(path) if stat.S_ISLNK(st.st_mode) else \
                open(path, "rb").read() if stat.S_ISREG(st.st_mode) else None
            found[os.path.relpath(path, root)] = (st.st_mode, st.st_mtime_ns, content)
    return found


@pytest.mark.parametrize("link", ["private", "private/jwt", "codec-keys/keys.json", "codec-kek"])
def test_restore_follows_no_symlink_under_the_target(cli, archive, tmp_path, snap, link):
    """A symlink anywhere on the way to a restored file (a directory or the file itself) is
    refused before anything is written, inside the bundle or where the link points."""
    target, outside = tmp_path / "target", tmp_path / "outside"
    (target / link).parent.mkdir(parents=True)
    outside.mkdir()
    (outside / "keep").write_text("not the bundle's\n")
    (target / link).symlink_to(outside if not link.endswith(".json") else outside / "keep")
    before, outside_before = tree(target), snap(outside)
    line = restore(cli, archive, target).assert_one_error("symbolic link", link)
    assert PASSPHRASE not in line
    assert tree(target) == before and snap(outside) == outside_before
    assert os.path.islink(target / link)


def test_restore_writes_no_config_through_a_symlink(cli, archive, tmp_path, snap):
    target, outside = tmp_path / "target", tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.yaml").write_text("mine\n")
    link = tmp_path / "bundle.yaml"
    link.symlink_to(outside / "victim.yaml")
    outside_before = snap(outside)
    restore(cli, archive, target, "--config-out", link).assert_one_error("symbolic link")
    assert snap(outside) == outside_before and not target.exists() and link.is_symlink()


def crafted_manifests():
    """(id, manifest -> manifest): each breaks one rule of the manifest's schema."""
    def file_field(key, value, index=0):
        def change(m):
            m["files"][index][key] = value
            return m
        return change

    def add_file(item):
        def change(m):
            m["files"].append(item)
            return m
        return change

    def conflicting(m):  # a file where another entry needs a directory
        m["files"].append({**m["files"][0], "name": "codec-keys/keys.json/x", "size": 0,
                           "sha256": hashlib.sha256(b"").hexdigest()})
        return m

    empty = {"size": 0, "sha256": hashlib.sha256(b"").hexdigest(), "mode": 0o600}
    return {
        "nul in a name": file_field("name", "private/c\x00a.pem", -1),
        "size a string": file_field("size", "12"),
        "size a float": file_field("size", 12.0),
        "size negative": file_field("size", -1),
        "size a bool": file_field("size", True),
        "mode a string": file_field("mode", "0600"),
        "mode too large": file_field("mode", 1 << 40),
        "sha256 a number": file_field("sha256", 5),
        "name a list": file_field("name", ["private/ca.pem"]),
        "name absolute": add_file({**empty, "name": "/private/x"}),
        "name with ..": add_file({**empty, "name": "private/../x"}),
        "name not normal": add_file({**empty, "name": "private//x"}),
        "name a surrogate": add_file({**empty, "name": "private/\udcff"}),
        "name twice": lambda m: add_file({**empty, "name": m["files"][0]["name"]})(m),
        "file and directory": conflicting,
        "unknown file key": file_field("owner", "root"),
        "missing file key": lambda m: [m["files"][0].pop("mode"), m][1],
        "unknown key": lambda m: {**m, "extra": 1},
        "missing key": lambda m: {k: v for k, v in m.items() if k != "created"},
        "files a mapping": lambda m: {**m, "files": {f["name"]: f for f in m["files"]}},
        "file a list": lambda m: {**m, "files": [list(f.items()) for f in m["files"]]},
        "format a string": lambda m: {**m, "format": "1"},
        "fingerprint a number": lambda m: {**m, "server_ca_sha256": 7},
        "a list": lambda m: [m],
        "null": lambda m: None,
    }


@pytest.mark.parametrize("case", list(crafted_manifests()))
def test_a_crafted_manifest_is_one_error_for_verify_and_restore(cli, archive, tmp_path, snap, case):
    crafted = write_archive(tmp_path, reseal(archive.read_bytes(), manifest=crafted_manifests()[case]))
    cli("backup", "verify", "--archive", crafted, "--out", tmp_path / "none").assert_one_error("manifest")
    assert_refused(cli, crafted, tmp_path / "target", snap, "manifest")
    assert not (tmp_path / "target").exists()


def test_an_archive_without_its_server_ca_is_one_error(cli, archive, tmp_path):
    crafted = write_archive(tmp_path, reseal(archive.read_bytes(), entries=lambda files: {
        name: data for name, data in files.items() if name != "private/ca.pem"}))
    cli("backup", "verify", "--archive", crafted, "--out", tmp_path / "none").assert_one_error("private/ca.pem")


@pytest.mark.parametrize("manifest", [b"[" * 100_000, b'{"format": NaN}', b'{"format": 1, "format": 1}', b"\xff\xfe"])
def test_an_unparsable_manifest_is_one_error(cli, tmp_path, manifest):
    from bootstrap.ops.archive_v1 import seal_payload
    from bootstrap.ops.archive_v2 import seal_records

    crafted = write_archive(tmp_path, seal_payload(struct.pack(">I", len(manifest)) + manifest, PASSPHRASE.encode(), 14))
    cli("backup", "verify", "--archive", crafted, "--out", tmp_path / "none").assert_one_error("manifest")
    out = io.BytesIO()
    seal_records(out, [], manifest, PASSPHRASE.encode(), 14)
    crafted = write_archive(tmp_path, out.getvalue(), "crafted-2.tbak")
    cli("backup", "verify", "--archive", crafted, "--out", tmp_path / "none").assert_one_error("manifest")


@pytest.mark.parametrize("passphrase", ["é" * 11, "e\u0301" * 6 + "abcde"])
def test_the_passphrase_minimum_counts_characters_not_bytes(fresh_bundle, dump_args, tmp_path, monkeypatch, passphrase):
    """11 characters are 22 bytes in UTF-8; an e and a combining accent are one character (NFC)."""
    assert len(passphrase.encode()) >= 12
    monkeypatch.setenv("BACKUP_PASSPHRASE", passphrase)
    fresh_bundle.run("backup", "create", "--archive", tmp_path / "s.tbak", *dump_args).assert_one_error("too short")
    monkeypatch.setenv("BACKUP_PASSPHRASE", "é" * 12)
    assert fresh_bundle.run("backup", "create", "--archive", tmp_path / "s.tbak", *dump_args).code == 0


def test_another_clusters_keys_behind_all_of_this_clusters_public_cas_are_refused(cli, archive, bundle_maker, snap, tmp_path):
    """Every CA certificate is public (trust/): an archive holding cluster A's CA certificates
    with cluster B's CA keys is refused before anything is written, onto A or an empty directory."""
    other = bundle_maker()
    public = {name: path.read_bytes() for name, path in
              ((n, other.root / n) for n in open_archive(archive.read_bytes(), PASSPHRASE.encode()).entries)
              if name.startswith("private/ca") and name.endswith(".pem") and path.exists()}

    def name_it(manifest):
        return {**manifest, "server_ca_sha256": ca_fingerprint(public["private/ca.pem"], "A's CA")}

    crafted = write_archive(tmp_path, reseal(archive.read_bytes(), entries=lambda files: {**files, **public}, manifest=name_it))
    assert_refused(cli, crafted, other.root, snap, "is not the key of")
    assert_refused(cli, crafted, tmp_path / "empty", snap, "is not the key of")
