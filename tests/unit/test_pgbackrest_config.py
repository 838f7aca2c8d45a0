"""pgBackRest's configuration from the bootstrap: the repository passphrase is generated once in
private/ (0600, so the sealed archive carries it and it is never replaced), pgbackrest/ gets the
rendered config with it (0600) and db-backup's schedule, both from bundle.yaml database_backup;
bad database_backup settings are one error line."""

from __future__ import annotations

import configparser
import stat

import pytest

from bootstrap.core.config import parse_config
from bootstrap.errors import BundleError


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def ini(path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, comment_prefixes=("#",))
    parser.read_string(path.read_text())
    return parser


def test_init_writes_the_passphrase_once_and_the_config_with_it(bundle_maker):
    bundle = bundle_maker("namespaces: [{name: default}]\ndatabase_backup: {retention_full: 4, diff_every: 6h}\n")
    secret = bundle.root / "private" / "pgbackrest" / "repo-cipher.pass"
    conf = bundle.root / "pgbackrest" / "pgbackrest.conf"
    schedule = bundle.root / "pgbackrest" / "db-backup.env"
    assert mode(secret) == 0o600 and mode(conf) == 0o600
    passphrase = secret.read_text().strip()
    assert len(passphrase) >= 64
    parsed = ini(conf)
    assert parsed["global"]["repo1-cipher-type"] == "aes-256-cbc"
    assert parsed["global"]["repo1-cipher-pass"] == passphrase
    assert parsed["global"]["repo1-retention-full"] == "4"
    assert parsed["global"]["repo1-path"] == "/var/lib/pgbackrest/repo"
    assert parsed["global"]["lock-path"] == "/var/lib/pgbackrest/lock"
    assert parsed["temporal"]["pg1-path"] == "/var/lib/postgresql/data/pgdata"
    assert "DB_BACKUP_DIFF_EVERY=21600\n" in schedule.read_text()
    assert "DB_BACKUP_FULL_EVERY=604800\n" in schedule.read_text()
    # A second run keeps the passphrase; another bundle gets another one.
    assert bundle.run("init").code == 0
    assert secret.read_text().strip() == passphrase
    assert bundle_maker().root.joinpath("private/pgbackrest/repo-cipher.pass").read_text().strip() != passphrase


def test_a_damaged_passphrase_file_is_refused_and_nothing_is_written(bundle_maker, snap):
    bundle = bundle_maker()
    secret = bundle.root / "private" / "pgbackrest" / "repo-cipher.pass"
    secret.write_text("short\n")
    (bundle.root / "pgbackrest" / "pgbackrest.conf").unlink()
    before = snap(bundle.root)
    result = bundle.run("init")
    assert result.code == 1 and result.err.startswith("error: ") and "repo-cipher.pass" in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert snap(bundle.root) == before


def test_sqlite_bundles_have_no_pgbackrest(bundle_maker):
    bundle = bundle_maker("namespaces: [{name: default}]\npersistence: {driver: sqlite, sqlite_path: /tmp/x.db}\n")
    assert not (bundle.root / "pgbackrest").exists()
    assert not (bundle.root / "private" / "pgbackrest").exists()


@pytest.mark.parametrize("section,words", [
    ({"diff_every": "30s"}, "diff_every"),
    ({"full_every": "1d", "diff_every": "2d"}, "diff_every <= full_every"),
    ({"warn_age": "27h"}, "warn_age <= max_age"),
    ({"warn_age": "12h"}, "diff_every < warn_age"),
    ({"wal_failing_for": "10s"}, "wal_failing_for"),
    ({"retention_full": 0}, "retention_full"),
    ({"compress_level": 10}, "compress_level"),
    ({"retention": 3}, "unknown key 'retention'"),
])
def test_bad_database_backup_settings_are_one_error(section, words):
    with pytest.raises(BundleError) as caught:
        parse_config({"database_backup": section})
    assert words in str(caught.value)


def test_the_sealed_archive_carries_the_repository_passphrase(bundle_maker, cli, tmp_path, monkeypatch):
    """`make backup`'s archive brings the passphrase back onto an empty engine, so the restored
    bundle opens the pgBackRest repository again (its init renders the same pgbackrest.conf)."""
    monkeypatch.delenv("BACKUP_PASSPHRASE_FILE", raising=False)
    monkeypatch.setenv("BACKUP_PASSPHRASE", "correct horse battery staple")
    bundle = bundle_maker()
    dump = tmp_path / "temporal.dump"
    dump.write_bytes(b"PGDMP" + bytes(100))
    archive = tmp_path / "cluster.tbak"
    assert bundle.run("backup", "create", "--archive", archive, "--dump", f"temporal={dump}").code == 0
    target = tmp_path / "restored"
    result = cli("backup", "restore", "--archive", archive, "--out", target, "--config-out", tmp_path / "bundle.yaml")
    assert result.code == 0, result.err
    secret = "private/pgbackrest/repo-cipher.pass"
    assert (target / secret).read_bytes() == (bundle.root / secret).read_bytes()
    assert mode(target / secret) == 0o600
