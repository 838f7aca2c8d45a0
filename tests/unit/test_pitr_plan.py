"""`temporal-bundle pitr`: a point-in-time recovery target checked against the pgBackRest
repository's `info --output=json` before `make restore-pitr` stops or writes anything. Every
refusal is one `error:` line, exit 1 and nothing on stdout (so the Makefile's restore never runs);
a good target prints pgbackrest restore's options.

The info documents are shaped as pgBackRest 2.45 prints them (captured from a real repository),
plus the end of the archived WAL that db-backup.sh `check` adds (bundle-archive-end: the newest
segment holding a transaction and pg_waldump's time of its last commit)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

NOW = datetime.now(timezone.utc).replace(microsecond=0)
FULL_STOP = NOW - timedelta(days=2)
DIFF_STOP = NOW - timedelta(hours=3)
LAST_COMMIT = NOW - timedelta(seconds=20)
SEGMENT = "0000000100000000000000A3"


def waldump_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f UTC")


def backup(label: str, kind: str, stop: datetime, error: bool = False) -> dict:
    stop_s = int(stop.timestamp())
    return {"archive": {"start": "000000010000000000000002", "stop": "000000010000000000000002"},
            "backrest": {"format": 5, "version": "2.45"}, "database": {"id": 1, "repo-key": 1}, "error": error,
            "info": {"delta": 22992600, "repository": {"delta": 3358896, "size": 3358896}, "size": 22992600},
            "label": label, "lsn": {"start": "0/2000028", "stop": "0/2000100"}, "prior": None, "reference": None,
            "timestamp": {"start": stop_s - 30, "stop": stop_s}, "type": kind}


def info(backups: list[dict], code: int = 0, message: str = "ok", repo_message: str = "ok",
         end: object = "default") -> str:
    entry = {"archive": [], "backup": backups, "cipher": "aes-256-cbc", "db": [], "name": "temporal",
             "repo": [{"cipher": "aes-256-cbc", "key": 1, "status": {"code": code, "message": repo_message}}],
             "status": {"code": code, "lock": {"backup": {"held": False}}, "message": message}}
    if end == "default":
        end = {"segment": SEGMENT, "commit": waldump_time(LAST_COMMIT)}
    if end is not None:
        entry["bundle-archive-end"] = end
    return json.dumps([entry])


GOOD = info([backup("20261204-010000F", "full", FULL_STOP),
             backup("20261204-010000F_20261206-010000D", "diff", DIFF_STOP)])


@pytest.fixture
def pitr(cli, tmp_path):
    def run(time: str, text: str = GOOD):
        path = tmp_path / "info.json"
        path.write_text(text)
        return cli("pitr", "--time", time, "--info", path)
    return run


def pg(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S+00")


def refused(result, *words: str) -> None:
    assert result.code == 1, result
    assert result.out == "", result.out  # no restore options: the Makefile's restore never starts
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    for word in words:
        assert word in lines[0], (word, lines[0])


WINDOW = (f"from {FULL_STOP:%Y-%m-%d %H:%M:%S}.000000+00 (the end of the first backup, 20261204-010000F) "
          f"to {LAST_COMMIT:%Y-%m-%d %H:%M:%S}.000000+00 (the last transaction in the archived WAL, segment {SEGMENT})")


def test_a_time_before_the_first_backup_is_refused(pitr):
    refused(pitr(pg(FULL_STOP - timedelta(seconds=1))), "before the end of the first backup", WINDOW)


def test_a_time_in_the_future_is_refused(pitr):
    refused(pitr(pg(datetime.now(timezone.utc) + timedelta(minutes=5))), "in the future", WINDOW)


@pytest.mark.parametrize("after", [timedelta(0), timedelta(microseconds=1), timedelta(seconds=19)])
def test_a_time_after_the_last_archived_transaction_is_refused_naming_the_window(pitr, after):
    # Not in the future, but past what was archived: PostgreSQL would stop with "recovery ended
    # before configured recovery target was reached" after the services were stopped.
    refused(pitr((LAST_COMMIT + after).isoformat()), "after the last archived WAL", WINDOW, "TIME=latest")


def test_a_time_just_before_the_last_archived_transaction_is_accepted(pitr):
    target = LAST_COMMIT - timedelta(microseconds=1)
    result = pitr(target.isoformat())
    assert result.code == 0, result
    assert result.out.splitlines()[-1] == f"--target={target:%Y-%m-%d %H:%M:%S.%f}+00"


@pytest.mark.parametrize("last_commit", [FULL_STOP - timedelta(minutes=1), FULL_STOP])
def test_right_after_the_first_backup_no_time_is_restorable_and_the_window_does_not_read_backwards(pitr, last_commit):
    text = info([backup("20261204-010000F", "full", FULL_STOP)],
                end={"segment": SEGMENT, "commit": waldump_time(last_commit)})
    for time in (FULL_STOP, FULL_STOP + timedelta(hours=1)):
        result = pitr(pg(time), text)
        refused(result, "after the last archived WAL", "can restore no time yet",
                f"no transaction after {pg(FULL_STOP)[:-3]}.000000+00 (the end of the first backup, 20261204-010000F)",
                "TIME=latest")
        assert "restore from" not in result.err, result.err  # no window "from" a time "to" an earlier one
    assert pitr("latest", text).code == 0


@pytest.mark.parametrize("end", [None, {"segment": SEGMENT, "commit": None}, {"segment": None, "commit": None}])
def test_without_the_end_of_the_archive_only_latest_is_accepted(pitr, end):
    text = info([backup("20261204-010000F", "full", FULL_STOP)], end=end)
    refused(pitr(pg(NOW - timedelta(hours=1)), text), "cannot be checked against the end of the archived WAL",
            "TIME=latest")
    assert pitr("latest", text).code == 0


@pytest.mark.parametrize("end", ["x", [], {"segment": SEGMENT}, {"segment": SEGMENT, "commit": 5},
                                 {"segment": "../x", "commit": "2026-12-06 10:40:02.123456 UTC"},
                                 {"segment": SEGMENT, "commit": "2026-12-06 10:40:02.123456 CET"},
                                 {"segment": SEGMENT, "commit": "2026-13-06 10:40:02 UTC"},
                                 {"segment": SEGMENT, "commit": "2026-12-06 10:40:02.123456+00"}])
def test_a_malformed_end_of_the_archive_is_refused(pitr, end):
    refused(pitr(pg(NOW - timedelta(hours=1)), info([backup("20261204-010000F", "full", FULL_STOP)], end=end)),
            "malformed bundle-archive-end")


@pytest.mark.parametrize("time", ["2026-12-06 10:40", "2026-12-06 10:40:00", "yesterday", "", "2026-13-40 10:00:00+00",
                                  "2026-12-06 10:40:00+00; rm -rf /"])
def test_a_time_without_offset_or_not_a_time_is_refused(pitr, time):
    refused(pitr(time), "TIME")


@pytest.mark.parametrize("code,words", [(1, "no backup yet"), (2, "no backup yet"), (3, "no backup yet"),
                                        (99, "cannot be read"), (4, "cannot be read")])
def test_a_repository_without_backups_or_unreadable_is_refused(pitr, code, words):
    refused(pitr("latest", info([], code=code, message="other", repo_message="[FormatError] unable to load info file")),
            words)


def test_a_repository_whose_backups_all_have_errors_is_refused(pitr):
    refused(pitr("latest", info([backup("20261204-010000F", "full", FULL_STOP, error=True)])), "no good backup")


@pytest.mark.parametrize("text", ["", "not json", "{}", "[]", json.dumps([{"name": "other"}]),
                                  info([{"label": "x"}])])
def test_garbage_info_is_refused(pitr, text):
    refused(pitr("latest", text))


def test_a_time_between_backups_restores_the_last_backup_before_it(pitr):
    target = DIFF_STOP - timedelta(hours=1)
    result = pitr(pg(target))
    assert result.code == 0, result
    assert result.out.splitlines() == ["--set=20261204-010000F", "--type=time",
                                       f"--target={target:%Y-%m-%d %H:%M:%S}.000000+00"]
    assert "full backup 20261204-010000F" in result.err


def test_a_time_after_the_last_backup_restores_it_and_replays_to_the_time(pitr):
    target = NOW - timedelta(minutes=1)
    result = pitr(target.astimezone(timezone(timedelta(hours=2))).isoformat())  # another offset, same instant
    assert result.code == 0, result
    assert result.out.splitlines() == ["--set=20261204-010000F_20261206-010000D", "--type=time",
                                       f"--target={target:%Y-%m-%d %H:%M:%S}.000000+00"]


def test_latest_restores_the_newest_backup_to_the_end_of_the_archive(pitr):
    result = pitr("latest")
    assert result.code == 0, result
    assert result.out.splitlines() == ["--set=20261204-010000F_20261206-010000D", "--type=default"]
