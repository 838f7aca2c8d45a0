"""Backup health: the db-backup service's metrics file judged with bundle.yaml's database_backup
thresholds, with check-expiry's exit codes (0 ok, 1 warning, 2 critical, 3 unreadable).

The same file is what Prometheus scrapes (through the expiry exporter, /metrics/backup) and what
the alert rules (templates/backup-alert-rules.yml.j2) judge with the same numbers, so
`check-backup` and the alerts agree (tests/unit/test_backup_health.py and promtool in
tests/docker/test_pitr.py check it).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from ..core.config.database_backup import DatabaseBackupConfig
from ..core.durations import human_duration
from ..errors import BundleError

OK, WARNING, CRITICAL, UNREADABLE = "ok", "warning", "critical", "unreadable"
CODES = {OK: 0, WARNING: 1, CRITICAL: 2, UNREADABLE: 3}
# db-backup writes the file every DB_BACKUP_POLL (60 s); ten missed rounds is a stopped service.
STALE_AFTER = timedelta(minutes=10)
# pgbackrest info status codes that are not a fault: ok, no backup yet (the age check says so),
# a backup running.
REPO_FINE = (0, 2, 6)
METRIC = "temporal_bundle_"
SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)(\s+\d+)?")


@dataclass(frozen=True)
class Item:
    name: str  # report | backup | wal | repository | last_run
    status: str
    detail: str


@dataclass(frozen=True)
class Report:
    items: tuple[Item, ...]

    @property
    def code(self) -> int:
        return max((CODES[i.status] for i in self.items), default=CODES[UNREADABLE])


def parse_metrics(text: str) -> dict[str, float]:
    """Unlabelled samples of our metrics (the file db-backup writes has no labels)."""
    values: dict[str, float] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = SAMPLE.fullmatch(line)
        if not match:
            raise BundleError(f"line {number} is not a Prometheus sample")
        name, labels, value = match.group(1), match.group(2), match.group(3)
        if labels or not name.startswith(METRIC):
            continue
        try:
            number_value = float(value)
        except ValueError:
            raise BundleError(f"line {number}: {value!r} is not a number") from None
        if math.isnan(number_value):
            raise BundleError(f"line {number}: NaN")
        values[name[len(METRIC):]] = number_value
    return values


def _when(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


def _age(now: datetime, seconds: float) -> timedelta:
    return now - _when(seconds)


def check(text: str, now: datetime, thresholds: DatabaseBackupConfig) -> Report:
    try:
        values = parse_metrics(text)
    except BundleError as exc:
        return Report((Item("report", UNREADABLE, f"not a db-backup metrics file: {exc}"),))
    reported = values.get("db_backup_report_timestamp_seconds")
    if reported is None:
        return Report((Item("report", UNREADABLE, "no temporal_bundle_db_backup_report_timestamp_seconds: "
                                                  "not a db-backup metrics file"),))
    items = []
    if _age(now, reported) > STALE_AFTER:
        items.append(Item("report", UNREADABLE, f"written {human_duration(_age(now, reported))} ago: is the db-backup "
                                                f"service running?"))
    else:
        items.append(Item("report", OK, f"written {human_duration(max(_age(now, reported), timedelta()))} ago"))
    items.append(_backup_item(values, now, thresholds))
    items.append(_repository_item(values))
    items.append(_wal_item(values, now, thresholds))
    run_status = values.get("db_backup_last_run_status")
    if run_status is not None:
        status = OK if run_status == 0 else WARNING
        items.append(Item("last_run", status, "the last backup run succeeded" if run_status == 0 else
                          f"the last backup run failed (exit {int(run_status)}); its error line: docker compose logs "
                          f"db-backup (scheduled) or the output of make backup-db"))
    return Report(tuple(items))


def _backup_item(values: dict[str, float], now: datetime, t: DatabaseBackupConfig) -> Item:
    last = values.get("db_backup_last_good_timestamp_seconds", 0)
    if last <= 0:
        return Item("backup", CRITICAL, "no good backup in the repository")
    age = _age(now, last)
    detail = f"last good backup ended {_when(last):%Y-%m-%d %H:%M:%SZ}, {human_duration(max(age, timedelta()))} ago"
    if age > t.max_age:
        return Item("backup", CRITICAL, f"{detail} (more than {human_duration(t.max_age)})")
    if age > t.warn_age:
        return Item("backup", WARNING, f"{detail} (more than {human_duration(t.warn_age)})")
    return Item("backup", OK, detail)


def _repository_item(values: dict[str, float]) -> Item:
    code = values.get("db_backup_repo_status")
    if code is None:
        return Item("repository", UNREADABLE, "no repository status in the report")
    if int(code) in REPO_FINE:
        return Item("repository", OK, f"pgbackrest info status {int(code)}")
    return Item("repository", CRITICAL, f"pgbackrest info status {int(code)}: the repository cannot be read "
                                        "(a wrong passphrase, a damaged or missing repository)")


def _wal_item(values: dict[str, float], now: datetime, t: DatabaseBackupConfig) -> Item:
    archived = values.get("wal_last_archived_timestamp_seconds")
    failed = values.get("wal_last_failed_timestamp_seconds")
    if archived is None or failed is None:
        return Item("wal", UNREADABLE, "no pg_stat_archiver figures: PostgreSQL did not answer db-backup")
    if failed <= archived:
        if archived <= 0:
            return Item("wal", OK, "no WAL segment archived yet")
        return Item("wal", OK, f"last WAL segment archived {human_duration(max(_age(now, archived), timedelta()))} ago")
    # Failing now: since the last success (or, never archived, since the first failure we know of).
    since = _age(now, archived) if archived > 0 else _age(now, failed)
    detail = (f"WAL archiving is failing (last failure {_when(failed):%H:%M:%SZ}, last success "
              f"{'never' if archived <= 0 else _when(archived).strftime('%Y-%m-%d %H:%M:%SZ')})")
    if since >= t.wal_failing_for:
        return Item("wal", CRITICAL, f"{detail} for {human_duration(since)}; PostgreSQL keeps the WAL until it succeeds")
    return Item("wal", WARNING, detail)


def table_text(report: Report) -> str:
    width = max(len(i.name) for i in report.items)
    return "\n".join(f"{i.name:<{width}}  {i.status:<10}  {i.detail}" for i in report.items)


def json_text(report: Report) -> str:
    return json.dumps({"status": report.code, "items": [i.__dict__ for i in report.items]}, indent=2)
