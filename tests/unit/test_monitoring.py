"""The monitoring profile's files: alert rules rendered with bundle.yaml's thresholds agree with
check-expiry's judgement, Prometheus scrapes what the compose file names, check-expiry takes its
defaults from the same bundle.yaml, and the exporter serves what check-expiry computes.

(The PromQL itself is evaluated by real Prometheus in tests/docker/test_monitoring_stack.py.)"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from bootstrap.cli import main
from bootstrap.core.config import load_config, parse_config
from bootstrap.errors import BundleError
from bootstrap.ops.expiry import CRITICAL, EXPIRED, OK, WARNING, Thresholds, expiry_status
from bootstrap.core.pki import CA, utcnow
from bootstrap.ops.render import render_all
from tests.support.monitoring import GRAFANA, dashboard_exprs
from tests.support.paths import REPO
from tests.support.ports import free_port

CLAMP = re.compile(r"clamp_max\(temporal_bundle_lifetime_seconds \* ([0-9.]+), ([0-9]+)\)")
CONFIG = "namespaces: [{name: default}]\npersistence: {driver: sqlite, sqlite_path: /tmp/unused-monitoring.db}\n"


def rules(config) -> dict:
    doc = yaml.safe_load(render_all(config)["alert-rules.yml"])
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"]}


def rule_status(rule_set: dict, left: timedelta, lifetime: timedelta) -> str:
    """What the rendered rules say about an item, with their own numbers (share, cap) applied."""
    (warn_share, warn_cap), (crit_share, crit_cap) = (
        (float(a), int(b)) for a, b in CLAMP.findall(rule_set["BundleCredentialExpiring"]["expr"])
    )
    assert CLAMP.findall(rule_set["BundleCredentialCritical"]["expr"]) == [(repr(crit_share), str(crit_cap))]
    s, life = left.total_seconds(), lifetime.total_seconds()
    warn, crit = min(life * warn_share, warn_cap), min(life * crit_share, crit_cap)
    if s <= 0:
        return EXPIRED
    if s < crit:
        return CRITICAL
    if s < warn:
        return WARNING
    return OK


@pytest.mark.parametrize("warn,crit", [("7d", "1d"), ("30d", "7d"), ("2h", "90m")])
def test_alert_rules_and_check_expiry_agree_on_every_item(warn, crit):
    config = parse_config({"monitoring": {"expiry_warn": warn, "expiry_crit": crit}})
    rule_set = rules(config)
    thresholds = Thresholds(config.monitoring.expiry_warn, config.monitoring.expiry_crit)
    lifetimes = [timedelta(hours=1), timedelta(hours=24), timedelta(days=90), timedelta(days=3650)]
    checked = 0
    for lifetime in lifetimes:
        for fraction in (1.0, 0.5, 0.34, 0.33, 0.2, 0.11, 0.09, 0.01, 0.0, -0.1):
            for left in (lifetime * fraction, thresholds.warn - timedelta(seconds=1), thresholds.crit,
                         thresholds.crit - timedelta(seconds=1)):
                expected = expiry_status(left, thresholds.for_lifetime(lifetime))
                assert rule_status(rule_set, left, lifetime) == expected, (warn, crit, lifetime, left)
                checked += 1
    assert checked == len(lifetimes) * 40


def test_rules_name_the_thresholds_of_bundle_yaml():
    config = parse_config({"monitoring": {"expiry_warn": "5d", "expiry_crit": "12h", "frontend_error_ratio": 0.2,
                                          "persistence_latency_p99": "2s"}})
    rule_set = rules(config)
    assert CLAMP.findall(rule_set["BundleCredentialExpiring"]["expr"])[0][1] == str(5 * 86400)
    assert CLAMP.findall(rule_set["BundleCredentialCritical"]["expr"])[0][1] == str(12 * 3600)
    assert "> 0.2" in rule_set["TemporalFrontendErrorRate"]["expr"]
    assert "> 2.0" in rule_set["TemporalPersistenceLatency"]["expr"]
    assert rule_set["BundleCredentialExpired"]["labels"]["severity"] == "critical"


def test_prometheus_scrapes_the_compose_names():
    config = load_config(REPO / "bundle.example.yaml")
    prom = yaml.safe_load(render_all(config)["prometheus.yml"])
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    assert jobs["temporal"]["static_configs"][0]["targets"] == ["temporal-metrics:8000"]
    assert jobs["bundle-token-expiry"]["metrics_path"] == "/metrics/tokens"
    assert prom["global"]["scrape_interval"] == "30s"
    compose = yaml.safe_load((REPO / "docker-compose.prod.yml").read_text())
    services = compose["services"]
    # The server binds its metrics to the alias only the monitoring network resolves.
    assert services["temporal"]["networks"]["monitoring"]["aliases"] == [config.network.metrics_host]
    assert compose["networks"]["monitoring"]["internal"] is True
    assert [f"/bundle/config/{Path(p).name}" for p in prom["rule_files"]] == ["/bundle/config/alert-rules.yml",
                                                                              "/bundle/config/backup-alert-rules.yml"]
    assert "bundle-config:/bundle/config:ro" in services["prometheus"]["volumes"]
    for name in ("prometheus", "expiry-exporter", "alertmanager"):
        assert services[name]["profiles"] == ["monitoring"]
        assert "ports" not in services[name], f"{name} must not be published"
        assert "edge" not in services[name]["networks"]
    assert services["grafana"]["profiles"] == ["monitoring"]  # published on purpose, behind Dex
    # Firing alerts go to the profile's Alertmanager, on the monitoring network only, unpublished.
    targets = [t for a in prom["alerting"]["alertmanagers"] for c in a["static_configs"] for t in c["targets"]]
    alertmanager = services["alertmanager"]
    assert targets == ["alertmanager:9093"] and "--web.listen-address=:9093" in alertmanager["command"]
    assert alertmanager["networks"] == ["monitoring"]
    assert "--cluster.listen-address=" in alertmanager["command"]  # no gossip listener
    assert "./docker/alertmanager/alertmanager.yml:/etc/alertmanager/alertmanager.yml:ro" in alertmanager["volumes"]
    assert jobs["bundle-expiry"]["static_configs"][0]["targets"] == ["expiry-exporter:9464"]
    assert "--port=9464" in services["expiry-exporter"]["command"]
    # The exporter never sees a token, a signing key or the CA key.
    mounted = {v.split(":")[0] for v in services["expiry-exporter"]["volumes"] if isinstance(v, str)}
    assert not mounted & {"bundle-tokens", "bundle-private", "bundle-signing", "bundle-codec-keys"}


def test_bad_monitoring_config_is_one_error():
    for bad, words in [({"expiry_warn": "1d", "expiry_crit": "2d"}, "expiry_crit"),
                       ({"frontend_error_ratio": 2}, "frontend_error_ratio"),
                       ({"scrape_interval": "0s"}, "scrape_interval"),
                       ({"alerts": True}, "unknown key")]:
        with pytest.raises(BundleError, match=words):
            parse_config({"monitoring": bad})


def test_metrics_bind_to_loopback_unless_a_host_is_named():
    assert parse_config({}).network.metrics_listen_host == "127.0.0.1"
    server = yaml.safe_load(render_all(parse_config({"network": {"metrics_host": "temporal-metrics"}}))["temporal.yaml"])
    assert server["global"]["metrics"]["prometheus"]["listenAddress"] == "temporal-metrics:8000"


# --- check-expiry and the exporter read the same thresholds ----------------------------------


@pytest.fixture
def bundle(tmp_path, capsys) -> tuple[Path, Path]:
    config, out = tmp_path / "bundle.yaml", tmp_path / "bundle"
    config.write_text(CONFIG)
    assert main(["init", "--config", str(config), "--out", str(out), "-q"]) == 0
    capsys.readouterr()
    return config, out


def aged_cert(directory: Path, left: timedelta, lifetime: timedelta = timedelta(days=90)) -> None:
    now = utcnow()
    leaf = CA.create().issue_cert("aged.example", now=now - (lifetime - left), lifetime=lifetime)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "aged.pem").write_bytes(leaf.cert_pem())


def test_check_expiry_defaults_come_from_bundle_yaml(bundle, capsys):
    config, out = bundle
    aged_cert(out / "clients", timedelta(days=20))
    assert main(["check-expiry", str(out)]) == 0  # 7d: fine
    config.write_text(CONFIG + "monitoring: {expiry_warn: 25d, expiry_crit: 2d}\n")
    assert main(["check-expiry", str(out), "--config", str(config)]) == 1
    assert main(["check-expiry", str(out), "--config", str(config), "--warn", "10d"]) == 0  # the flag wins
    config.write_text(CONFIG + "monitoring: {expiry_warn: nonsense}\n")
    capsys.readouterr()
    assert main(["check-expiry", str(out), "--config", str(config)]) == 3
    assert capsys.readouterr().err.startswith("error: ")


def test_lifetime_metric_lets_rules_apply_the_share(bundle, tmp_path):
    _, out = bundle
    metrics = tmp_path / "m.prom"
    main(["check-expiry", str(out), "--prometheus", str(metrics)])
    lines = [l for l in metrics.read_text().splitlines() if l.startswith("temporal_bundle_lifetime_seconds{")]
    assert lines and all(float(l.rsplit(" ", 1)[1]) > 0 for l in lines)
    assert any('name="tokens/system.jwt"' in l and l.endswith(" 3600") for l in lines)


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_exporter_serves_certificates_live_and_the_refreshers_token_file(bundle, tmp_path, capsys):
    config, out = bundle
    textfile = tmp_path / "metrics" / "tokens.prom"
    # The refresher's side: one round of mint-tokens with the metrics file.
    assert main(["mint-tokens", "--config", str(config), "--out", str(out), "-q", "--expiry-metrics", str(textfile)]) == 0
    assert 'temporal_bundle_expiry_seconds{name="system.jwt",kind="token"' in textfile.read_text()
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bootstrap", "serve-expiry-metrics", str(out), "--config", str(config),
                             "--host", "127.0.0.1", "--port", str(port), "--textfile", str(textfile)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                if get(base + "/healthz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        status, body = get(base + "/metrics")
        assert status == 200 and 'name="server/frontend.pem"' in body and "temporal_bundle_check_status 0" in body
        assert get(base + "/metrics/tokens") == (200, textfile.read_text())
        aged_cert(out / "clients", timedelta(days=2))  # checked afresh on the next scrape
        status, body = get(base + "/metrics")
        assert 'temporal_bundle_item_status{name="clients/aged.pem",kind="cert",subject="aged.example"} 1' in body
        textfile.unlink()
        assert get(base + "/metrics/tokens")[0] == 503  # the scrape fails: up == 0 alerts
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# --- Grafana: provisioning files only (no Grafana image is built or run here) -----------------

def test_grafana_dashboards_use_the_provisioned_prometheus():
    """Grafana is not a Debian package and its image needs a frontend build: none is built here, so
    this checks the files only; tests/docker/test_monitoring_stack.py runs every query on real Prometheus."""
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert [d["uid"] for d in datasources] == ["temporal-bundle-prometheus"]
    assert datasources[0]["url"] == "http://prometheus:9090"  # the compose service, monitoring network
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "temporal-bundle.yml").read_text())["providers"][0]
    assert provider["options"]["path"] == "/etc/grafana/dashboards"
    dashboards = sorted((GRAFANA / "dashboards").glob("*.json"))
    assert [p.name for p in dashboards] == ["temporal-server.json"]
    dashboard = json.loads(dashboards[0].read_text())
    titles = [p["title"] for p in dashboard["panels"]]
    assert any("expiry" in t for t in titles) and any("Persistence" in t for t in titles)
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == datasources[0]["uid"], panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasources[0]["uid"], panel["title"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    assert any("temporal_bundle_expiry_timestamp_seconds" in e for e in dashboard_exprs())


def test_check_expiry_without_a_mounted_config_uses_the_defaults(bundle, monkeypatch, tmp_path):
    """The image sets BUNDLE_CONFIG; `docker run IMAGE check-expiry DIR` without bundle.yaml still works."""
    _, out = bundle
    monkeypatch.setenv("BUNDLE_CONFIG", str(tmp_path / "not-mounted.yaml"))
    assert main(["check-expiry", str(out)]) == 0
    assert main(["check-expiry", str(out), "--config", str(tmp_path / "not-mounted.yaml")]) == 3  # named: must exist
