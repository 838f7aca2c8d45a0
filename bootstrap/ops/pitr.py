"""Point-in-time recovery, planned: which pgBackRest backup set to restore and to what target,
from the repository's `pgbackrest info --output=json` and the time asked for.

Pure: nothing is written or run here. A target the repository cannot reach is refused before
anything is stopped or written: a time outside the window [end of the first backup, last
transaction in the archived WAL] (a time in the future is past that end too), a repository without
a backup, an unreadable repository.

The window's end: pgBackRest 2.45's info names the archived WAL by segment only (archive min/max,
no time), so db-backup.sh (`check`) reads the newest archived segments with pg_waldump and adds
the time of the last commit or abort record in them to the stanza's entry, as ARCHIVE_END:
{"segment": "0000000100000000000000A3", "commit": "2026-12-06 10:40:02.123456 UTC"}. PostgreSQL
stops a time recovery before the first commit after the target (recovery_target_inclusive), and
fails with "recovery ended before configured recovery target was reached" when there is none: so
a target must be before that last commit. Without the key (or with a null commit) the end is
unknown and only TIME=latest is accepted.
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
ARCHIVE_END = "bundle-archive-end"
# pg_waldump's form of a commit time (src/bin/pg_waldump/compat.c, db-backup.sh runs it with TZ=UTC).
WALDUMP_TIME = re.compile(r"(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(\.\d{1,6})?) UTC")
SEGMENT = re.compile(r"[0-9A-F]{24}")
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
class ArchiveEnd:
    segment: str
    commit: datetime  # the last commit or abort record in the archived WAL


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


def stanza_entry(text: str, stanza: str) -> dict:
    try:
        doc = json.loads(text)
    except ValueError:
        raise BundleError("the repository's info is not JSON (pgbackrest info --output=json)") from None
    entry = next((s for s in doc if isinstance(s, dict) and s.get("name") == stanza), None) if isinstance(doc, list) else None
    if entry is None:
        raise BundleError(f"the repository has no stanza {stanza!r}: nothing to restore (make backup-db takes the first backup)")
    return entry


def parse_archive_end(text: str, stanza: str) -> ArchiveEnd | None:
    """The last transaction in the archived WAL, as db-backup.sh added it to the info (ARCHIVE_END);
    None when it is not there or no segment it read held a commit. Malformed: refused."""
    end = stanza_entry(text, stanza).get(ARCHIVE_END)
    if end is None or (isinstance(end, dict) and "commit" in end and end["commit"] is None):
        return None
    if not isinstance(end, dict) or not isinstance(end.get("commit"), str) or not isinstance(end.get("segment"), str):
        raise BundleError(f"the repository's info has a malformed {ARCHIVE_END}")
    match = WALDUMP_TIME.fullmatch(end["commit"].strip())
    if not match or not SEGMENT.fullmatch(end["segment"]):
        raise BundleError(f"the repository's info has a malformed {ARCHIVE_END}")
    try:
        commit = datetime.fromisoformat(match.group(1)).replace(tzinfo=timezone.utc)
    except ValueError:
        raise BundleError(f"the repository's info has a malformed {ARCHIVE_END}") from None
    return ArchiveEnd(end["segment"], commit)


def parse_info(text: str, stanza: str) -> list[BackupSet]:
    """The stanza's good backups, oldest first, from `pgbackrest info --output=json`."""
    entry = stanza_entry(text, stanza)
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


def window_text(first: BackupSet, end: ArchiveEnd | None) -> str:
    since = f"{pg_time(first.stop)} (the end of the first backup, {first.label})"
    if end is not None and end.commit <= first.stop:
        # Right after the first backup: nothing committed since is archived yet. A window "from"
        # that end "to" an earlier commit would read backwards.
        return (f"the repository can restore no time yet: its archived WAL holds no transaction after {since} "
                f"(the last one: {pg_time(end.commit)}, segment {end.segment}); a time becomes restorable once "
                "the WAL written after it is archived (within archive_timeout)")
    last = (f"{pg_time(end.commit)} (the last transaction in the archived WAL, segment {end.segment})"
            if end is not None else "an unknown end (no transaction found in the newest archived WAL segments)")
    return f"the repository can restore from {since} to {last}"


def plan_pitr(backups: list[BackupSet], target: datetime | None, now: datetime,
              end: ArchiveEnd | None = None) -> PitrPlan:
    """end: the last transaction in the archived WAL (parse_archive_end); a time target must lie
    in [end of the first backup, end), else it is refused naming that window."""
    if target is None:
        return PitrPlan(backups[-1], None)
    first = backups[0]
    window = window_text(first, end)
    if target > now:
        raise BundleError(f"TIME {pg_time(target)} is in the future (now {pg_time(now)}): {window}")
    if target < first.stop:
        raise BundleError(f"TIME {pg_time(target)} is before the end of the first backup: {window}")
    if end is None:
        raise BundleError(f"TIME {pg_time(target)} cannot be checked against the end of the archived WAL: {window}; "
                          "TIME=latest restores to whatever end the archive has")
    if target >= end.commit:
        raise BundleError(f"TIME {pg_time(target)} is after the last archived WAL: {window}; "
                          "TIME=latest restores to that end")
    chosen = [b for b in backups if b.stop <= target][-1]
    return PitrPlan(chosen, target)
