"""check-backup: the db-backup service's report judged with bundle.yaml's database_backup
thresholds, with check-expiry's exit codes (0 ok, 1 warning, 2 critical, 3 unreadable); and the
backup alert rules carry the same thresholds. (promtool evaluates the rules against check-backup's
judgement on the same series in tests/docker/test_pitr.py.)"""

from __future__ import annotations

import re
import time
from datetime import timedelta

import pytest
import yaml

from bootstrap.core.config import parse_config
from bootstrap.ops.render import render_all

HOUR = 3600


def report(now: float, backup_age: float | None = 3 * HOUR, archived_age: float | None = 30,
           failed_age: float | None = None, repo: int = 0, reported_age: float = 20, run_status: int | None = None) -> str:
    lines = [f"temporal_bundle_db_backup_report_timestamp_seconds {now - reported_age}",
             f"temporal_bundle_db_backup_repo_status {repo}",
             f"temporal_bundle_db_backup_last_good_timestamp_seconds {0 if backup_age is None else now - backup_age}"]
    if archived_age is not None:
        lines += [f"temporal_bundle_wal_last_archived_timestamp_seconds {now - archived_age if archived_age >= 0 else 0}",
                  f"temporal_bundle_wal_last_failed_timestamp_seconds {0 if failed_age is None else now - failed_age}"]
    if run_status is not None:
        lines += [f"temporal_bundle_db_backup_last_run_status {run_status}"]
    return "# HELP x y\n" + "\n".join(lines) + "\n"


@pytest.fixture
def check(cli, tmp_path):
    def run(text: str | None, *extra):
        path = tmp_path / "backup.prom"
        if text is not None:
            path.write_text(text)
        return cli("check-backup", "--metrics", path, *extra)
    return run


@pytest.mark.parametrize("case,code,row", [
    (dict(), 0, None),
    (dict(backup_age=24.5 * HOUR), 0, None),
    (dict(backup_age=25.5 * HOUR), 1, "backup      warning"),
    (dict(backup_age=26.5 * HOUR), 2, "backup      critical"),
    (dict(backup_age=None), 2, "no good backup"),
    (dict(repo=99), 2, "repository  critical"),
    (dict(repo=2, backup_age=None), 2, "backup      critical"),
    (dict(repo=6), 0, None),
    (dict(archived_age=120, failed_age=10), 1, "wal         warning"),
    (dict(archived_age=301, failed_age=10), 2, "wal         critical"),
    (dict(archived_age=-1, failed_age=400), 2, "wal         critical"),
    (dict(archived_age=10, failed_age=400), 0, None),
    (dict(run_status=50), 1, "last_run    warning"),
    (dict(reported_age=11 * 60), 3, "report      unreadable"),
    (dict(archived_age=None), 3, "wal         unreadable"),
    (dict(backup_age=30 * HOUR, reported_age=11 * 60), 3, None),  # unreadable wins over critical
])
def test_exit_codes_follow_check_expiry(check, case, code, row):
    result = check(report(time.time(), **case))
    assert result.code == code, (case, result)
    if row:
        assert row in result.out, result.out
    if code == 3:
        assert result.err.startswith("error: ")


def test_thresholds_come_from_bundle_yaml(check, tmp_path):
    config = tmp_path / "bundle.yaml"
    config.write_text("namespaces: [{name: default}]\ndatabase_backup: {diff_every: 1h, warn_age: 2h, max_age: 3h,"
                      " wal_failing_for: 1m}\n")
    now = time.time()
    assert check(report(now, backup_age=2.5 * HOUR), "--config", config).code == 1
    assert check(report(now, backup_age=3.5 * HOUR), "--config", config).code == 2
    assert check(report(now, archived_age=90, failed_age=5), "--config", config).code == 2
    assert check(report(now, backup_age=2.5 * HOUR)).code == 0  # the defaults: 25h / 26h


@pytest.mark.parametrize("text", [None, "", "garbage here\n", "temporal_bundle_db_backup_report_timestamp_seconds x\n",
                                  "temporal_bundle_db_backup_report_timestamp_seconds NaN\n"])
def test_missing_or_garbage_report_is_unreadable(check, text):
    result = check(text)
    assert result.code == 3 and result.err.startswith("error: "), result


def test_usage_error_is_3_not_critical(check):
    with pytest.raises(SystemExit) as caught:
        check(report(time.time()), "--no-such-option")
    assert caught.value.code == 3


def test_json_output(check):
    import json
    result = check(report(time.time(), backup_age=26.5 * HOUR), "--json")
    doc = json.loads(result.out)
    assert doc["status"] == 2 and {i["name"]: i["status"] for i in doc["items"]}["backup"] == "critical"


def rules(config) -> dict:
    doc = yaml.safe_load(render_all(config)["backup-alert-rules.yml"])
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"]}


@pytest.mark.parametrize("warn,crit,wal", [("25h", "26h", "5m"), ("3h", "4h", "2m")])
def test_rules_carry_the_thresholds_check_backup_uses(warn, crit, wal):
    config = parse_config({"database_backup": {"diff_every": "1h", "warn_age": warn, "max_age": crit,
                                               "wal_failing_for": wal}})
    rule_set = rules(config)
    b = config.database_backup
    late = rule_set["BundleDatabaseBackupLate"]["expr"]
    assert f"> {int(b.warn_age.total_seconds())}" in late and f"<= {int(b.max_age.total_seconds())}" in late
    assert f"> {int(b.max_age.total_seconds())}" in rule_set["BundleDatabaseBackupMissing"]["expr"]
    assert re.search(rf">= {int(b.wal_failing_for.total_seconds())}\b", rule_set["BundleWalArchivingFailing"]["expr"])
    assert rule_set["BundleDatabaseBackupMissing"]["labels"]["severity"] == "critical"
    assert "for" not in rule_set["BundleDatabaseBackupMissing"]  # fires where check-backup says critical


def test_prometheus_scrapes_the_backup_report_and_loads_its_rules():
    config = parse_config({})
    prom = yaml.safe_load(render_all(config)["prometheus.yml"])
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    assert jobs["bundle-db-backup"]["metrics_path"] == "/metrics/backup"
    assert jobs["bundle-db-backup"]["static_configs"][0]["targets"] == ["expiry-exporter:9464"]
    assert "/bundle/config/backup-alert-rules.yml" in prom["rule_files"]
    assert timedelta(hours=26) == config.database_backup.max_age
