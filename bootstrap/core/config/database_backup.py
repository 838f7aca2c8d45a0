"""The `database_backup:` section: continuous WAL archiving and pgBackRest backups of PostgreSQL.

The compose service `db-backup` takes a full backup when the last one is older than `full_every`
and a differential one when the last backup of any type is older than `diff_every`; pgBackRest
keeps `retention_full` full backups (and the WAL they need). `check-backup` and the Prometheus
alert rules share `warn_age`, `max_age` and `wal_failing_for`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from ...errors import BundleError
from .reader import Section

CIPHER_TYPE = "aes-256-cbc"  # pgBackRest 2.45's one repository cipher


@dataclass(frozen=True)
class DatabaseBackupConfig:
    full_every: timedelta = timedelta(days=7)
    diff_every: timedelta = timedelta(days=1)
    retention_full: int = 2  # pgBackRest repo1-retention-full: full backups kept (with their diffs and WAL)
    warn_age: timedelta = timedelta(hours=25)  # check-backup warns when the last good backup is older
    max_age: timedelta = timedelta(hours=26)  # critical, and the alert BundleDatabaseBackupMissing
    wal_failing_for: timedelta = timedelta(minutes=5)  # WAL archiving failing this long: critical and alert
    compress_level: int = 3  # gz level of backups and archived WAL (pgBackRest's default 6 costs CPU)


def parse_database_backup(sec: Section) -> DatabaseBackupConfig:
    default = DatabaseBackupConfig()
    config = DatabaseBackupConfig(
        full_every=sec.duration("full_every", default.full_every),
        diff_every=sec.duration("diff_every", default.diff_every),
        retention_full=sec.integer("retention_full", default.retention_full, 1, 100),
        warn_age=sec.duration("warn_age", default.warn_age),
        max_age=sec.duration("max_age", default.max_age),
        wal_failing_for=sec.duration("wal_failing_for", default.wal_failing_for),
        compress_level=sec.integer("compress_level", default.compress_level, 0, 9),
    )
    sec.done()
    if config.diff_every < timedelta(minutes=1) or config.full_every < config.diff_every:
        raise BundleError(f"{sec.where}: need 1m <= diff_every <= full_every")
    if not config.diff_every < config.warn_age <= config.max_age:
        raise BundleError(f"{sec.where}: need diff_every < warn_age <= max_age (a backup due is not yet late)")
    if config.wal_failing_for < timedelta(minutes=1):
        raise BundleError(f"{sec.where}: wal_failing_for must be at least 1m")
    return config
