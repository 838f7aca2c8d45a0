"""check-backup: is there a recent good database backup, and is WAL archiving working? With
check-expiry's monitoring exit codes. The checking lives in bootstrap.ops.backup_health.

It handles its own errors: the generic CLI's exit 1 for a BundleError means "warning" here.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..core.config import BundleConfig, load_config
from ..core.pki import utcnow
from ..errors import BundleError
from ..ops.backup_health import UNREADABLE, CODES, Report, check, json_text, table_text

HELP = "report the age of the last good database backup and WAL archiving (exit 0 ok, 1 warning, 2 critical, 3 unreadable)"

DESCRIPTION = """\
Judge the db-backup service's metrics file (what Prometheus scrapes at the expiry exporter's
/metrics/backup) with bundle.yaml's database_backup thresholds, the ones the alert rules use."""

EPILOG = """\
rows:
  report      the metrics file itself: unreadable when older than 10 minutes (db-backup stopped)
  backup      the newest good pgBackRest backup: warning past database_backup.warn_age (25h),
              critical past max_age (26h) or when there is none
  repository  pgbackrest info's status: critical when the repository cannot be read (a wrong
              passphrase, a damaged or missing repository)
  wal         pg_stat_archiver: warning while archiving fails, critical once it has failed for
              wal_failing_for (5m) since the last success; unreadable if PostgreSQL did not answer
  last_run    the last backup run (scheduled or make backup-db): warning if it failed

exit codes (the highest applicable wins: 3 > 2 > 1 > 0):
  0  ok   1  warning   2  critical
  3  unreadable: the metrics file is missing, stale, garbage, or lacks a figure; a bad bundle.yaml;
     a command-line usage error"""


def add_parser(sub, name):
    parser = sub.add_parser(name, help=HELP, description=DESCRIPTION, epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    option = parser.add_argument
    option("--metrics", type=Path, default=Path("/var/lib/db-backup-metrics/backup.prom"), metavar="FILE",
           help="the db-backup service's metrics file (default: /var/lib/db-backup-metrics/backup.prom)")
    option("--config", metavar="FILE",
           help="bundle.yaml with the database_backup thresholds (default: env BUNDLE_CONFIG if that file exists; "
           "without one: the defaults)")
    option("--json", action="store_true", help="print a JSON document instead of the table")
    parser.set_defaults(run=run, usage_error_code=CODES[UNREADABLE])


def thresholds(args):
    path = args.config or os.environ.get("BUNDLE_CONFIG")
    if path and (args.config or Path(path).is_file()):
        return load_config(path).database_backup
    return BundleConfig(cluster_name="temporal", namespaces=(), roles=()).database_backup


def run(args) -> int:
    try:
        limits = thresholds(args)
        try:
            text = args.metrics.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise BundleError(f"cannot read {args.metrics}: {exc.strerror or exc} (is the db-backup service running?)") from None
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return CODES[UNREADABLE]
    report: Report = check(text, utcnow(), limits)
    for item in report.items:
        if item.status == UNREADABLE:
            print(f"error: {item.name}: {item.detail}", file=sys.stderr)
    print(json_text(report) if args.json else table_text(report))
    return report.code
