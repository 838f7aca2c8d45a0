"""Continuous WAL archiving and point-in-time recovery with pgBackRest, on a real Docker engine and
a stack of its own (it destroys the database volume): the db-backup service takes the first full
backup by itself and check-backup says ok; the refusals of `make restore-pitr` and `make backup-db`
(one error line, nothing stopped, nothing written); then workflows start at a steady rate through
the real server, the postgres volume is destroyed, `make restore-pitr TIME=latest` restores onto
the empty volume, and every workflow acknowledged before the last archive_timeout (10 s here) is
back; then a restore to a time in the middle of the load keeps exactly the workflows acknowledged
before it. The database is small: Temporal's two schemas and a few hundred workflows (its size is
printed). Also promtool evaluates the backup alert rules against check-backup's judgement.

Faults, on the same stack (each leaves it healthy for the next): the repository volume (a 1 GiB
loop-mounted ext4, tests/support/pitr_stack.size_limited_volume) filled to the last block while
the database keeps serving, and the database stopped in the middle of a backup. Each fails cleanly
(one error line, check-backup says so, no backup counted, nothing stopped by a refused restore)
and works again once the fault is gone; a TIME after the last archived transaction is refused
before anything is stopped."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import datetime, timedelta, timezone

import pytest
import yaml

from bootstrap.core.config import load_config
from bootstrap.ops.backup_health import CODES, check
from bootstrap.ops.render import render_all
from tests.support.compose_stack import TIMINGS, ComposeStack, build_standin_images, run, unique_project
from tests.support.paths import REPO
from tests.support.pitr_stack import load_then_lose_postgres, present, size_limited_volume
from tests.support.waits import wait_until

pytestmark = [pytest.mark.own_stack, pytest.mark.docker, pytest.mark.timeout(1800)]

ARCHIVE_TIMEOUT = 10  # seconds: WAL_ARCHIVE_TIMEOUT of this stack, the recovery point it promises
RATE = 4  # workflow starts per second
PREFIX = "pitr"
REPO_SIZE = "1G"  # the repository volume's file system, small enough to fill in a second
REPO_MOUNT = "/var/lib/pgbackrest"  # where db-backup / db-restore mount it


@pytest.fixture(scope="module")
def pitr_stack(tmp_path_factory):
    images = build_standin_images()
    workdir = tmp_path_factory.mktemp("pitr-stack")
    with size_limited_volume(workdir, "pgbackrest-repo", REPO_SIZE, owner="999:999") as repo_override:
        s = ComposeStack(unique_project("tbpitr"), workdir, images, extra_env={"WAL_ARCHIVE_TIMEOUT": str(ARCHIVE_TIMEOUT)},
                         compose_files=("docker-compose.prod.yml", str(repo_override)))
        try:
            started = time.monotonic()
            s.up()
            TIMINGS["pitr_make_up_s"] = round(time.monotonic() - started, 1)
            yield s
        finally:
            print(f"\ncompose logs: {s.teardown('pitr-compose.log')}\ntimings: {TIMINGS}")


def stack_make_args(stack: ComposeStack) -> list[str]:
    """make's COMPOSE for this stack's files (ComposeStack.make's choice), for a make run in the background."""
    return ["COMPOSE=docker compose " + " ".join(f"-f {f}" for f in stack.all_compose_files)]


def one_error_line(result: subprocess.CompletedProcess, *words: str) -> str:
    assert result.returncode != 0, result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    for word in words:
        assert word in errors[0], (word, errors[0])
    return errors[0]


def running(stack: ComposeStack) -> dict[str, str]:
    out = stack.compose("ps", "--format", "json", "--status", "running").stdout
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    if len(rows) == 1 and isinstance(rows[0], list):
        rows = rows[0]
    return {r["Service"]: r["ID"] for r in rows}


def pg(stack: ComposeStack, sql: str) -> str:
    return stack.compose("exec", "-T", "postgresql", "psql", "--host=/var/run/postgresql", "--username=postgres",
                         "--no-psqlrc", "-tAc", sql).stdout.strip()


def check_backup(stack: ComposeStack) -> subprocess.CompletedProcess:
    return stack.make("check-backup", check=False, timeout=120)


def row(result: subprocess.CompletedProcess, name: str) -> str:
    """check-backup's row `name` (wal, last_run, ...)."""
    return next((line for line in result.stdout.splitlines() if line.startswith(f"{name} ")), "")


def wal_line(result: subprocess.CompletedProcess) -> str:
    return row(result, "wal")


def backup_labels(stack: ComposeStack) -> list[str]:
    """The backups the repository counts (pgbackrest info: a backup cut short is not among them)."""
    info = json.loads(stack.compose("run", "--rm", "--no-deps", "-T", "db-restore", "info").stdout)
    return [b["label"] for b in info[0].get("backup") or []]


def repo_shell(stack: ComposeStack, script: str) -> str:
    """A shell as postgres (999) with the repository volume mounted, as db-backup sees it."""
    return stack.compose("run", "--rm", "--no-deps", "-T", "--entrypoint", "sh", "db-restore", "-c", script).stdout


def utc(moment: float) -> str:
    return datetime.fromtimestamp(moment, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f+00")


def archiver(stack: ComposeStack) -> dict:
    return json.loads(pg(stack, "SELECT row_to_json(a) FROM pg_stat_archiver a"))


def server_answers(stack: ComposeStack) -> bool:
    try:
        present(stack, "pitr-probe", 1)  # a describe through the server: NotFound is an answer
        return True
    except Exception:  # noqa: BLE001 - still reconnecting to the database
        return False


def test_the_schedule_takes_the_first_full_backup_by_itself(pitr_stack):
    result = wait_until(lambda: (r := check_backup(pitr_stack)).returncode == 0 and r, 180, "check-backup ok", interval=3)
    assert "backup      ok" in result.stdout and "wal         ok" in result.stdout, result.stdout
    info = pitr_stack.compose("run", "--rm", "--no-deps", "-T", "db-restore", "info").stdout
    backups = json.loads(info)[0]["backup"]
    assert [b["type"] for b in backups] == ["full"], backups
    assert json.loads(info)[0]["cipher"] == "aes-256-cbc"
    # The repository is encrypted: no file in it holds a PostgreSQL page or WAL in the clear.
    listing = pitr_stack.compose("run", "--rm", "--no-deps", "-T", "--entrypoint", "sh", "db-restore", "-c",
                                 "grep -rl 'pg_catalog' /var/lib/pgbackrest/repo | head -n 3; echo end").stdout
    assert listing.strip() == "end", listing
    size = pg(pitr_stack, "SELECT pg_size_pretty(sum(pg_database_size(datname))) FROM pg_database")
    print(f"\ndatabase size at the first backup: {size}")


# --------------------------------------------------------------------------- refusals


def test_a_time_before_the_first_backup_is_refused_and_nothing_stops(pitr_stack):
    before = running(pitr_stack)
    result = pitr_stack.make("restore-pitr", "TIME=2020-01-01 00:00:00+00", "CONFIRM=yes", check=False, timeout=300)
    one_error_line(result, "before the end of the first backup")
    assert running(pitr_stack) == before


def test_a_time_in_the_future_is_refused_and_nothing_stops(pitr_stack):
    before = running(pitr_stack)
    future = (datetime.now(timezone.utc) + timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S+00")
    result = pitr_stack.make("restore-pitr", f"TIME={future}", "CONFIRM=yes", check=False, timeout=300)
    one_error_line(result, "in the future")
    assert running(pitr_stack) == before


def test_a_restore_onto_a_database_that_is_not_empty_needs_confirm(pitr_stack):
    before = running(pitr_stack)
    result = pitr_stack.make("restore-pitr", "TIME=latest", check=False, timeout=300)
    one_error_line(result, "not empty", "CONFIRM=yes")
    assert running(pitr_stack) == before


def test_a_wrong_repository_passphrase_is_refused(pitr_stack):
    conf = "/bundle/pgbackrest/pgbackrest.conf"
    edit = pitr_stack.compose("run", "--rm", "--no-deps", "-T", "--user", "0:0", "--entrypoint", "sh", "bootstrap", "-c",
                              f"cp -p {conf} /tmp/keep && sed -i 's/^repo1-cipher-pass=.*/repo1-cipher-pass={'x' * 64}/' {conf}"
                              f" && cat /tmp/keep", timeout=120)
    original = edit.stdout
    try:
        before = running(pitr_stack)
        result = pitr_stack.make("restore-pitr", "TIME=latest", "CONFIRM=yes", check=False, timeout=300)
        one_error_line(result, "passphrase does not match")
        assert running(pitr_stack) == before
        backup = pitr_stack.make("backup-db", "TYPE=diff", check=False, timeout=300)
        one_error_line(backup, "passphrase does not match")
    finally:  # the bootstrap renders it back (the file differs from what bundle.yaml says)
        pitr_stack.compose("run", "--rm", "--no-deps", "-T", "bootstrap", "init", "--quiet", timeout=300)
    assert pitr_stack.read_bundle_file("pgbackrest/pgbackrest.conf").decode() == original


def test_two_backups_at_once_one_is_refused_by_the_lock(pitr_stack):
    procs = [subprocess.Popen(["make", "--no-print-directory", *stack_make_args(pitr_stack), "backup-db",
                               "TYPE=full"], cwd=REPO, env=pitr_stack.env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [subprocess.CompletedProcess(p.args, p.wait(timeout=600), *p.communicate()) for p in procs]
    codes = sorted(r.returncode for r in results)
    assert codes[0] == 0 and codes[1] != 0, [(r.returncode, r.stderr[-500:]) for r in results]
    refused = next(r for r in results if r.returncode != 0)
    one_error_line(refused, "another database backup or restore is running")


# --------------------------------------------------------------------------- faults


def test_a_full_repository_fails_archiving_and_backups_cleanly_and_nothing_is_lost(pitr_stack):
    stack = pitr_stack
    labels = backup_labels(stack)
    t0 = time.monotonic()
    free = repo_shell(stack, f"avail=$(df --output=avail -B1 {REPO_MOUNT} | tail -n1); "
                             f"[ \"$avail\" -gt 0 ] && fallocate -l \"$avail\" {REPO_MOUNT}/filler; "
                             f"dd if=/dev/zero of={REPO_MOUNT}/filler-tail bs=4096 2>/dev/null; "
                             f"df --output=avail -B1 {REPO_MOUNT} | tail -n1")
    try:
        assert int(free.strip()) == 0, free
        failed = archiver(stack)["failed_count"]
        # The database keeps serving: this write commits although its WAL cannot be archived.
        pg(stack, "CREATE TABLE IF NOT EXISTS pitr_fault (note text); INSERT INTO pitr_fault VALUES ('while full')")
        segment = pg(stack, "SELECT pg_walfile_name(pg_current_wal_lsn())")
        pg(stack, "SELECT pg_switch_wal()")
        wait_until(lambda: archiver(stack)["failed_count"] > failed, 60, "archive-push to fail on the full volume")
        pg(stack, "INSERT INTO pitr_fault VALUES ('still serving')")

        status = check_backup(stack)  # exit 1 from check-backup; make says 2 for any failure
        assert status.returncode != 0 and "Error 1" in status.stderr, status.stdout + status.stderr
        assert wal_line(status).startswith("wal         warning     WAL archiving is failing"), status.stdout

        backup = stack.make("backup-db", "TYPE=diff", check=False, timeout=300)
        print(f"\nrepository full, make backup-db: {one_error_line(backup, 'repository volume is full')}")
        assert backup_labels(stack) == labels  # the backup cut short is not counted
        # The manual run's failure is in the report as the schedule's would be.
        assert row(check_backup(stack), "last_run").startswith("last_run    warning     the last backup run failed (exit 1)")

        # A time during the outage is past the last archived transaction: refused before anything stops.
        before = running(stack)
        time.sleep(1)
        restore = stack.make("restore-pitr", f"TIME={utc(time.time() - 0.5)}", "CONFIRM=yes", check=False, timeout=300)
        print(f"repository full, make restore-pitr TIME=now: "
              f"{one_error_line(restore, 'after the last archived WAL', 'the end of the first backup', 'the last transaction')}")
        assert running(stack) == before
    finally:
        repo_shell(stack, f"rm -f {REPO_MOUNT}/filler {REPO_MOUNT}/filler-tail")

    # Space is back: the segment written while full is archived (nothing lost), check-backup is ok.
    pg(stack, "INSERT INTO pitr_fault VALUES ('space back'); SELECT pg_switch_wal()")
    wait_until(lambda: pg(stack, f"SELECT last_archived_wal >= '{segment}' FROM pg_stat_archiver") == "t", 120,
               f"segment {segment} archived once space returned")
    stack.make("backup-db", "TYPE=diff", timeout=300)
    after = backup_labels(stack)
    assert after[:-1] == labels and after[-1].endswith("D"), (labels, after)
    ok = wait_until(lambda: (r := check_backup(stack)).returncode == 0 and r, 120, "check-backup ok again", interval=3)
    assert row(ok, "last_run").startswith("last_run    ok"), ok.stdout
    TIMINGS["pitr_repo_full_test_s"] = round(time.monotonic() - t0, 1)


def test_the_database_stopped_mid_backup_fails_it_cleanly_and_the_next_one_works(pitr_stack):
    stack = pitr_stack
    labels = backup_labels(stack)
    t0 = time.monotonic()
    backup = subprocess.Popen(["make", "--no-print-directory", *stack_make_args(stack), "backup-db", "TYPE=full"],
                              cwd=REPO, env=stack.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # pgBackRest holds its session (pg_backup_start .. pg_backup_stop) for the whole backup:
        # stop the database as soon as that session is there, i.e. in the middle of the backup.
        stack.compose("exec", "-T", "postgresql", "sh", "-c",
                      "for i in $(seq 1200); do psql --host=/var/run/postgresql --username=postgres --no-psqlrc -tAc "
                      "\"SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pgBackRest%backup%'\" "
                      "| grep -qx 1 && exit 0; sleep 0.05; done; echo 'no pgBackRest backup session' >&2; exit 1",
                      timeout=300)
        stack.compose("stop", "postgresql", timeout=120)
        stopped = time.time()
    finally:
        out, err = backup.communicate(timeout=600)
    result = subprocess.CompletedProcess(backup.args, backup.returncode, out, err)
    print(f"\ndatabase stopped mid-backup, make backup-db: {one_error_line(result, 'pgbackrest backup', 'the database stopped during it')}")
    try:
        assert backup_labels(stack) == labels  # the backup cut short is not counted
        status = check_backup(stack)  # exit 3 from check-backup
        assert status.returncode != 0 and "Error 3" in status.stderr, status.stdout + status.stderr
        assert wal_line(status).startswith("wal         unreadable  no pg_stat_archiver figures: PostgreSQL did not answer"), \
            status.stdout

        # After the stop nothing more was archived: a time after it is refused before anything stops.
        before = running(stack)
        time.sleep(1)
        restore = stack.make("restore-pitr", f"TIME={utc(stopped + 0.5)}", "CONFIRM=yes", check=False, timeout=300)
        one_error_line(restore, "after the last archived WAL", "the end of the first backup")
        assert running(stack) == before
    finally:
        stack.compose("start", "postgresql", timeout=300)
    wait_until(lambda: pg(stack, "SELECT NOT pg_is_in_recovery()") == "t", 120, "postgresql back", interval=1)
    kept = stack.compose("exec", "-T", "postgresql", "sh", "-c", "ls /var/lib/postgresql/data").stdout.split()
    assert kept == ["pgdata"], kept  # the refused restore moved nothing aside
    stack.make("backup-db", "TYPE=diff", timeout=300)
    after = backup_labels(stack)
    assert after[:-1] == labels and after[-1].endswith("D"), (labels, after)
    wait_until(lambda: check_backup(stack).returncode == 0, 120, "check-backup ok again", interval=3)
    wait_until(lambda: server_answers(stack), 180, "the Temporal server answers again", interval=3)
    TIMINGS["pitr_db_stopped_test_s"] = round(time.monotonic() - t0, 1)


# --------------------------------------------------------------------------- recovery under load


def test_recovery_to_the_last_archived_wal_and_to_a_time_under_load(pitr_stack):
    stack = pitr_stack
    load = load_then_lose_postgres(stack, PREFIX, RATE, before_middle=10, after_middle=15)
    acks = load.acks
    assert len(acks) >= RATE * 18, f"only {len(acks)} starts acknowledged in {load.loss - load.started:.0f}s"

    t0 = time.monotonic()
    result = stack.make("restore-pitr", "TIME=latest", check=False, timeout=900)
    TIMINGS["pitr_restore_latest_s"] = round(time.monotonic() - t0, 1)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    back = present(stack, PREFIX, load.total)
    lost = {i: t for i, t in acks.items() if i not in back}
    window = load.loss - min(lost.values()) if lost else 0.0
    print(f"\nrecovery point (TIME=latest, archive_timeout {ARCHIVE_TIMEOUT}s, {RATE}/s): {len(acks)} acknowledged, "
          f"{len(lost)} lost, all within the last {window:.1f}s before the loss")
    TIMINGS["pitr_lost_workflows"] = len(lost)
    TIMINGS["pitr_lost_window_s"] = round(window, 1)
    # Lost: only workflows of the last 60 s (the bound), in fact of the last archive_timeout
    # plus the push and the kill's slack.
    assert all(load.loss - t <= 60 for t in lost.values()), sorted(load.loss - t for t in lost.values())
    assert window <= ARCHIVE_TIMEOUT + 15, window

    # Back to the middle of the load: exactly what was acknowledged before that time.
    target = datetime.fromtimestamp(load.middle, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f+00")
    t0 = time.monotonic()
    result = stack.make("restore-pitr", f"TIME={target}", "CONFIRM=yes", check=False, timeout=900)
    TIMINGS["pitr_restore_time_s"] = round(time.monotonic() - t0, 1)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    back = present(stack, PREFIX, load.total)
    early = {i for i, t in acks.items() if t < load.middle - 1}
    late = {i for i, t in acks.items() if t > load.middle + 1}
    assert early <= back, sorted(early - back)[:10]
    assert not late & back, sorted(late & back)[:10]
    # The replaced data directory is kept beside the restored one.
    kept = stack.compose("exec", "-T", "postgresql", "sh", "-c", "ls /var/lib/postgresql/data").stdout.split()
    assert any(k.startswith("pgdata.replaced-") for k in kept), kept


# --------------------------------------------------------------------------- the alert rules


def report(now: int, backup_age: int, archived_age: int, failed_age: int | None,
           run_status: int | None = None) -> dict[str, float]:
    values = {"temporal_bundle_db_backup_report_timestamp_seconds": now - 10,
              "temporal_bundle_db_backup_repo_status": 0,
              "temporal_bundle_db_backup_last_good_timestamp_seconds": 0 if backup_age < 0 else now - backup_age,
              "temporal_bundle_wal_last_archived_timestamp_seconds": now - archived_age,
              "temporal_bundle_wal_last_failed_timestamp_seconds": 0 if failed_age is None else now - failed_age}
    if run_status is not None:
        values["temporal_bundle_db_backup_last_run_status"] = run_status
    return values


def test_backup_rules_fire_exactly_where_check_backup_says_so(pitr_stack, tmp_path):
    config = load_config(pitr_stack.config)
    rules_text = render_all(config)["backup-alert-rules.yml"]
    eval_at = 3334 * 60  # seconds after promtool's epoch (on its 1m evaluation grid): time() there
    hour = 3600
    cases = [(3 * hour, 30, None), (int(25.5 * hour), 30, None), (int(26.5 * hour), 30, None), (-1, 30, None),
             (hour, 200, 10), (hour, 301, 10), (hour, 400, 5), (hour, 30, 100), (hour, 30, None, 0),
             (hour, 30, None, 1), (int(25.5 * hour), 30, None, 50)]
    series, expected = [], {"BundleDatabaseBackupLate": [], "BundleDatabaseBackupMissing": [],
                            "BundleWalArchivingFailing": [], "BundleDatabaseBackupRunFailed": []}
    for index, case in enumerate(cases):
        values = report(eval_at, *case)
        labels = {"job": "bundle-db-backup", "instance": f"case{index}"}
        label_text = ",".join(f'{k}="{v}"' for k, v in labels.items())
        for metric, value in values.items():
            series.append({"series": f"{metric}{{{label_text}}}", "values": f"{value}x3400"})
        judged = check("\n".join(f"{m} {v}" for m, v in values.items()),
                       datetime.fromtimestamp(eval_at, timezone.utc), config.database_backup)
        items = {i.name: i.status for i in judged.items}
        rule_severity = {"warning": "BundleDatabaseBackupLate", "critical": "BundleDatabaseBackupMissing"}
        if items["backup"] in rule_severity:
            rule = rule_severity[items["backup"]]
            expected[rule].append({"exp_labels": {**labels, "severity": items["backup"]}})
        if items["wal"] == "critical":
            expected["BundleWalArchivingFailing"].append({"exp_labels": {**labels, "severity": "critical"}})
        if items.get("last_run") == "warning":
            expected["BundleDatabaseBackupRunFailed"].append({"exp_labels": {**labels, "severity": "warning"}})
    assert all(expected.values()), expected
    (tmp_path / "rules.yml").write_text(rules_text)
    (tmp_path / "test.yml").write_text(yaml.safe_dump({
        "rule_files": ["rules.yml"], "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series,
                   "alert_rule_test": [{"eval_time": f"{eval_at}s", "alertname": alert,
                                        "exp_alerts": [{"exp_labels": a["exp_labels"]} for a in alerts]}
                                       for alert, alerts in expected.items()]}]}, sort_keys=False))
    # promtool compares annotations too when given; here only labels are expected, so drop them.
    doc = yaml.safe_load(rules_text)
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(doc, sort_keys=False))
    tmp_path.chmod(0o755)
    result = run(["docker", "run", "--rm", "--network", "none", "-v", f"{tmp_path}:/t:ro", "--workdir", "/t",
                  "--entrypoint", "promtool", pitr_stack.images["PROMETHEUS_IMAGE"], "test", "rules", "test.yml"],
                 check=False, timeout=120)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr
    assert CODES["critical"] == 2
