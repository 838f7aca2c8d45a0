"""Point-in-time recovery, planned: which pgBackRest backup set to restore and to what target,
from the repository's `pgbackrest info --output=json` and the time asked for.

Pure: nothing is written or run here. A target the repository cannot reach is refused before
anything is stopped or written: a time in the future, one before the end of the first backup
(the earliest consistent point), a repository without a backup, an unreadable repository.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone

from ..errors import BundleError

LATEST = "latest"
# pgbackrest info status codes (2.45, command/info/info.c): 0 ok, 1 missing stanza path, 2 no valid
# backups, 3 missing stanza data, 4 different cipher type, 5 database mismatch, 6 backup running.
STATUS_NO_BACKUP = (1, 2, 3)
STATUS_RUNNING = 6
# ISO 8601 / PostgreSQL-style time with an explicit offset: "2026-12-06 10:40:00+00",
# "2026-12-06T10:40:00.5Z", "2026-12-06 12:40+02:00".
TIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}(:?\d{2})?)")


@dataclass(frozen=True)
class BackupSet:
    label: str
    type: str  # full | diff | incr
    start: datetime
    stop: datetime


@dataclass(frozen=True)
class PitrPlan:
    backup: BackupSet
    target: datetime | None  # None: to the end of the archived WAL

    def pgbackrest_args(self) -> list[str]:
        if self.target is None:
            return [f"--set={self.backup.label}", "--type=default"]
        return [f"--set={self.backup.label}", "--type=time", f"--target={pg_time(self.target)}"]

    def describe(self) -> str:
        to = "its end" if self.target is None else pg_time(self.target)
        return (f"restore {self.backup.type} backup {self.backup.label} (ended {pg_time(self.backup.stop)}), "
                f"replay the archived WAL to {to}, promote")


def pg_time(moment: datetime) -> str:
    """The form PostgreSQL's recovery_target_time reads, in UTC."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f+00")


def parse_target(value: str) -> datetime | None:
    """TIME=latest, or a time with its offset (a time without one would mean the server's zone,
    the host's or UTC: refused rather than guessed)."""
    text = value.strip()
    if text == LATEST:
        return None
    if not TIME.fullmatch(text):
        raise BundleError(f"TIME {value!r} is not 'latest' or a time with its offset, e.g. '2026-12-06 10:40:00+00'")
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BundleError(f"TIME {value!r} is not a valid date and time") from None
    return moment


def parse_info(text: str, stanza: str) -> list[BackupSet]:
    """The stanza's good backups, oldest first, from `pgbackrest info --output=json`."""
    try:
        doc = json.loads(text)
    except ValueError:
        raise BundleError("the repository's info is not JSON (pgbackrest info --output=json)") from None
    entry = next((s for s in doc if isinstance(s, dict) and s.get("name") == stanza), None) if isinstance(doc, list) else None
    if entry is None:
        raise BundleError(f"the repository has no stanza {stanza!r}: nothing to restore (make backup-db takes the first backup)")
    status = entry.get("status") or {}
    code = status.get("code")
    if code in STATUS_NO_BACKUP:
        raise BundleError("the repository holds no backup yet: nothing to restore (make backup-db takes one)")
    if code not in (0, STATUS_RUNNING):
        reasons = "; ".join(str((r.get("status") or {}).get("message", "")) for r in entry.get("repo") or [])
        raise BundleError(f"the repository cannot be read (pgbackrest status {code}: {reasons or status.get('message')})")
    backups = []
    for item in entry.get("backup") or []:
        try:
            if item.get("error"):
                continue  # pgBackRest found page checksum errors in it
            stamps = item["timestamp"]
            backups.append(BackupSet(str(item["label"]), str(item["type"]),
                                     datetime.fromtimestamp(int(stamps["start"]), timezone.utc),
                                     datetime.fromtimestamp(int(stamps["stop"]), timezone.utc)))
        except (KeyError, TypeError, ValueError, OverflowError):
            raise BundleError("the repository's info lists a backup without label, type or times") from None
    if not backups:
        raise BundleError("the repository holds no good backup: nothing to restore (make backup-db takes one)")
    return sorted(backups, key=lambda b: b.stop)


def plan_pitr(backups: list[BackupSet], target: datetime | None, now: datetime) -> PitrPlan:
    if target is None:
        return PitrPlan(backups[-1], None)
    if target > now:
        raise BundleError(f"TIME {pg_time(target)} is in the future (now {pg_time(now)}): nothing to recover to yet")
    first = backups[0]
    if target < first.stop:
        raise BundleError(f"TIME {pg_time(target)} is before the end of the first backup ({first.label}, "
                          f"{pg_time(first.stop)}): the earliest point the repository can restore")
    chosen = [b for b in backups if b.stop <= target][-1]
    return PitrPlan(chosen, target)
