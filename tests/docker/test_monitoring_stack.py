"""The `monitoring` profile on the real engine, with real Prometheus (the docker tier's shared
stack runs with it): Temporal's metrics are scraped over the monitoring network, a query returns
the frontend's request counter, promtool accepts the rendered config and rules, the rules agree
with check-expiry item by item (promtool's rule tests), an alert fires in Prometheus when a
certificate inside its warning window appears in a bundle volume and reaches the profile's
Alertmanager (a real one: Debian's package in the stand-in), and no application container
(the edge network) reaches the metrics listener, the exporter or Prometheus. Grafana: where its
image is on the engine, a Dex user logs in (generic OAuth), gets the role its groups map to and
loads the provisioned dashboard and a query through the datasource; where it is not (here: no
registry, not a Debian package, its frontend needs a Node build), that one test says so and skips.

Reuses the docker tier's one stack (conftest.py); never starts another.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from bootstrap.core.config import load_config
from bootstrap.ops.expiry import CRITICAL, EXPIRED, WARNING, Thresholds, expiry_status
from bootstrap.core.pki import CA, utcnow
from bootstrap.ops.render import render_all

from tests.support.compose_stack import GRAFANA_ABSENT, ComposeStack, grafana_image, run

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]

ALERT_OF = {WARNING: "BundleCredentialExpiring", CRITICAL: "BundleCredentialCritical", EXPIRED: "BundleCredentialExpired"}
PROBE_DIR = "clients"  # a certificate volume the exporter reads; the probe files are removed afterwards


def prom(stack: ComposeStack, path: str) -> dict:
    """Prometheus' HTTP API from inside its own container (it is published nowhere)."""
    out = stack.compose("exec", "-T", "prometheus", "wget", "-qO-", f"http://127.0.0.1:9090{path}", timeout=60).stdout
    doc = json.loads(out)
    assert doc["status"] == "success", doc
    return doc["data"]


def alertmanager_alerts(stack: ComposeStack) -> list[dict]:
    """Alertmanager's API (v2) from inside its own container (it is published nowhere)."""
    out = stack.compose("exec", "-T", "alertmanager", "wget", "-qO-", "http://127.0.0.1:9093/api/v2/alerts",
                        timeout=60).stdout
    return json.loads(out)


def at_alertmanager(stack: ComposeStack, alert: str, name: str) -> list[dict]:
    return [a for a in alertmanager_alerts(stack) if a["labels"]["alertname"] == alert
            and a["labels"].get("name") == name and a["status"]["state"] == "active"]


def query(stack: ComposeStack, expr: str) -> list[dict]:
    return prom(stack, "/api/v1/query?query=" + urllib.parse.quote(expr))["result"]


def wait_until(what: str, probe, timeout: float = 120, every: float = 3):
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def firing(stack: ComposeStack, alert: str, name: str) -> list[dict]:
    return [a for a in prom(stack, "/api/v1/alerts")["alerts"]
            if a["labels"]["alertname"] == alert and a["labels"].get("name") == name and a["state"] == "firing"]


# --------------------------------------------------------------------------- scraping


def test_prometheus_scrapes_temporal_and_the_expiry_reports(running_stack):
    def all_up():
        targets = prom(running_stack, "/api/v1/targets")["activeTargets"]
        health = {t["labels"]["job"]: t["health"] for t in targets}
        return health if health == {"temporal": "up", "bundle-expiry": "up", "bundle-token-expiry": "up",
                                    "bundle-db-backup": "up"} else None

    wait_until("every target up", all_up, timeout=90)
    # The certificates the exporter checks and the tokens the refresher checks, all there.
    names = {r["metric"]["name"] for r in query(running_stack, "temporal_bundle_expiry_timestamp_seconds")}
    assert {"server/frontend.pem", "postgres/server.pem", "ui/client.pem", "system.jwt", "worker.jwt"} <= names, names
    assert query(running_stack, "temporal_bundle_jwks_up")[0]["value"][1] == "1"


def test_a_query_returns_the_frontends_request_counter(running_stack):
    result = running_stack.run_client("run", "monitoring-counter-wf")
    assert result["ok"], result
    expr = 'sum(service_requests{service_name="frontend", operation="StartWorkflowExecution"})'
    got = wait_until("the StartWorkflowExecution counter", lambda: query(running_stack, expr), timeout=60)
    assert float(got[0]["value"][1]) >= 1


def test_promtool_accepts_the_rendered_config_and_rules(running_stack):
    rules = running_stack.compose("exec", "-T", "prometheus", "promtool", "check", "rules",
                                  "/bundle/config/alert-rules.yml").stdout
    assert "SUCCESS" in rules and "rules found" in rules, rules
    config = running_stack.compose("exec", "-T", "prometheus", "promtool", "check", "config",
                                   "/bundle/config/prometheus.yml").stdout
    assert "SUCCESS" in config, config
    alertmanager = running_stack.compose("exec", "-T", "alertmanager", "amtool", "check-config",
                                         "/etc/alertmanager/alertmanager.yml").stdout
    assert "SUCCESS" in alertmanager, alertmanager
    active = prom(running_stack, "/api/v1/alertmanagers")["activeAlertmanagers"]
    assert [a["url"] for a in active] == ["http://alertmanager:9093/api/v2/alerts"], active
    loaded = prom(running_stack, "/api/v1/rules")["groups"]
    assert {g["name"] for g in loaded} == {"temporal-bundle-expiry", "temporal-bundle-server", "temporal-bundle-backup"}


# --------------------------------------------------------------------------- rules = check-expiry


def annotations(rule: dict, labels: dict) -> dict:
    out = {}
    for key, text in rule.get("annotations", {}).items():
        for label, value in labels.items():
            text = text.replace("{{ $labels.%s }}" % label, value)
        out[key] = text
    return out


def test_rules_fire_exactly_where_check_expiry_says_so(running_stack, tmp_path):
    """promtool's rule unit tests on the stack's own rendered rules: one series per (lifetime, time
    left) pair, and the alerts expected are the ones check-expiry's statuses name."""
    config = load_config(running_stack.config)
    rules_text = render_all(config)["alert-rules.yml"]
    rules = {r["alert"]: r for g in yaml.safe_load(rules_text)["groups"] for r in g["rules"]}
    thresholds = Thresholds(config.monitoring.expiry_warn, config.monitoring.expiry_crit)
    eval_at = 600  # seconds after promtool's epoch: time() there
    series, expected = [], {alert: [] for alert in ALERT_OF.values()}
    index = 0
    for lifetime in (timedelta(hours=1), timedelta(days=1), timedelta(days=90)):
        for fraction in (0.9, 0.34, 0.32, 0.11, 0.09, 0.001, -0.5):
            left = lifetime * fraction
            labels = {"job": "bundle-expiry", "instance": "exporter", "name": f"item{index}", "kind": "cert",
                      "subject": f"{lifetime}/{fraction}"}
            index += 1
            label_text = ",".join(f'{k}="{v}"' for k, v in labels.items())
            not_after = eval_at + int(left.total_seconds())
            series.append({"series": f"temporal_bundle_expiry_timestamp_seconds{{{label_text}}}", "values": f"{not_after}x20"})
            series.append({"series": f"temporal_bundle_lifetime_seconds{{{label_text}}}",
                           "values": f"{int(lifetime.total_seconds())}x20"})
            status = expiry_status(timedelta(seconds=not_after - eval_at), thresholds.for_lifetime(lifetime))
            if status in ALERT_OF:
                rule = rules[ALERT_OF[status]]
                expected[ALERT_OF[status]].append({"exp_labels": {**labels, **rule["labels"]},
                                                   "exp_annotations": annotations(rule, labels)})
    assert all(expected.values()), expected  # each status occurs at least once
    (tmp_path / "alert-rules.yml").write_text(rules_text)
    (tmp_path / "test.yml").write_text(yaml.safe_dump({
        "rule_files": ["alert-rules.yml"],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series,
                   "alert_rule_test": [{"eval_time": f"{eval_at}s", "alertname": alert, "exp_alerts": alerts}
                                       for alert, alerts in expected.items()]}],
    }, sort_keys=False))
    tmp_path.chmod(0o755)
    result = run(["docker", "run", "--rm", "--network", "none", "-v", f"{tmp_path}:/t:ro", "--workdir", "/t",
                  "--entrypoint", "promtool", running_stack.images["PROMETHEUS_IMAGE"], "test", "rules", "test.yml"],
                 check=False, timeout=120)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


# --------------------------------------------------------------------------- a real alert


def put_probe_certs(stack: ComposeStack, tmp_path: Path, lefts: dict[str, timedelta]) -> None:
    """Certificates (90-day lifetime, `left` to go) into a bundle volume the exporter reads."""
    now = utcnow()
    lifetime = timedelta(days=90)
    ca = CA.create()
    for name, left in lefts.items():
        leaf = ca.issue_cert(f"{name}.example", now=now - (lifetime - left), lifetime=lifetime)
        (tmp_path / name).write_bytes(leaf.cert_pem())
        (tmp_path / name).chmod(0o644)
    tmp_path.chmod(0o755)
    copy = " && ".join(f"cp /src/{n} /dst/{n} && chmod 0644 /dst/{n}" for n in lefts)
    run(["docker", "run", "--rm", "--network", "none", "--user", "0:0", "--entrypoint", "sh",
         "-v", f"{stack.volume('bundle-' + PROBE_DIR)}:/dst", "-v", f"{tmp_path}:/src:ro",
         stack.images["BUNDLE_IMAGE"], "-c", copy])


def remove_probe_certs(stack: ComposeStack, names) -> None:
    run(["docker", "run", "--rm", "--network", "none", "--user", "0:0", "--entrypoint", "rm",
         "-v", f"{stack.volume('bundle-' + PROBE_DIR)}:/dst", stack.images["BUNDLE_IMAGE"], "-f",
         *(f"/dst/{n}" for n in names)], check=False)


def test_a_certificate_inside_its_warning_window_fires_an_alert(running_stack, tmp_path):
    stack = running_stack
    probes = {"monitoring-warn-probe.pem": timedelta(days=2), "monitoring-crit-probe.pem": timedelta(hours=3)}
    put_probe_certs(stack, tmp_path, probes)
    try:
        warn_name, crit_name = (f"{PROBE_DIR}/{n}" for n in probes)
        started = time.monotonic()
        wait_until("BundleCredentialExpiring for the 2-day certificate",
                   lambda: firing(stack, "BundleCredentialExpiring", warn_name), timeout=90)
        wait_until("BundleCredentialCritical for the 3-hour certificate",
                   lambda: firing(stack, "BundleCredentialCritical", crit_name), timeout=60)
        print(f"\nalerts firing {time.monotonic() - started:.0f}s after the certificates appeared")
        # Prometheus delivered them to Alertmanager, with the labels the rules give.
        arrived = wait_until("BundleCredentialExpiring at Alertmanager",
                             lambda: at_alertmanager(stack, "BundleCredentialExpiring", warn_name), timeout=60)
        assert arrived[0]["labels"]["severity"] == "warning" and arrived[0]["receivers"][0]["name"] == "operators"
        wait_until("BundleCredentialCritical at Alertmanager",
                   lambda: at_alertmanager(stack, "BundleCredentialCritical", crit_name), timeout=60)
        print(f"at Alertmanager {time.monotonic() - started:.0f}s after the certificates appeared")
        assert not firing(stack, "BundleCredentialExpiring", crit_name)  # one status, one alert
        # check-expiry, with the same bundle.yaml, says the same of the same files.
        report = stack.compose("run", "--rm", "--no-deps", "bootstrap", "check-expiry", "/bundle", "--json",
                               check=False, timeout=180)
        assert report.returncode == 2, report.stderr
        statuses = {i["name"]: i["status"] for i in json.loads(report.stdout)["items"]}
        assert statuses[warn_name] == WARNING and statuses[crit_name] == CRITICAL
    finally:
        remove_probe_certs(stack, probes)
    wait_until("the alert to resolve once the certificate is gone",
               lambda: not firing(stack, "BundleCredentialExpiring", f"{PROBE_DIR}/monitoring-warn-probe.pem"),
               timeout=90)


# --------------------------------------------------------------------------- reachability

PROBE = """
import json, socket, sys, urllib.request
out = {}
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            out[target] = "connected"
    except OSError as exc:
        out[target] = "unreachable: " + (exc.strerror or type(exc).__name__)
print(json.dumps(out))
"""


def probe_from(stack: ComposeStack, network: str, *targets: str) -> dict:
    result = run(["docker", "run", "--rm", "--network", network, "--read-only", "--cap-drop", "ALL",
                  "--security-opt", "no-new-privileges:true", "--entrypoint", "python3", stack.images["BUNDLE_IMAGE"],
                  "-c", PROBE, *targets], timeout=120)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_no_application_container_reaches_the_metrics(running_stack):
    stack = running_stack
    monitoring_ip = stack.inspect("temporal")["NetworkSettings"]["Networks"][stack.network("monitoring")]["IPAddress"]
    assert monitoring_ip
    secret = ["temporal:8000", "temporal-metrics:8000", f"{monitoring_ip}:8000", "prometheus:9090",
              "expiry-exporter:9464", "alertmanager:9093"]
    from_edge = probe_from(stack, stack.network("edge"), "temporal:7233", *secret)
    assert from_edge.pop("temporal:7233") == "connected", "the probe itself cannot reach the frontend"
    assert all(v.startswith("unreachable") for v in from_edge.values()), from_edge
    # Control: from the monitoring network the same listeners answer, so "unreachable" is the network's doing.
    from_monitoring = probe_from(stack, stack.network("monitoring"), "temporal-metrics:8000", "prometheus:9090",
                                 "expiry-exporter:9464", "alertmanager:9093")
    assert set(from_monitoring.values()) == {"connected"}, from_monitoring


def test_every_grafana_dashboard_query_runs_on_this_prometheus(running_stack):
    """Each provisioned panel's query is valid PromQL for this Prometheus and returns series (after
    one workflow, every panel has data), with or without a Grafana image on the engine."""
    from tests.support.monitoring import dashboard_exprs

    assert running_stack.run_client("run", "monitoring-dashboard-wf")["ok"]
    empty = []
    for expr in dashboard_exprs():
        # rate() over 5m needs two scrapes; the stack has been scraped for longer than that by now.
        got = wait_until(f"data for {expr}", lambda: query(running_stack, expr) or None, timeout=60)
        if not got:
            empty.append(expr)
    assert not empty, empty


# --------------------------------------------------------------------------- Grafana


def grafana_session(stack: ComposeStack, monkeypatch, email: str, password: str):
    """An HTTPS client (the bundle's CA, cookies) logged in to Grafana through Dex's login form, as a
    browser does: /login/generic_oauth -> Dex -> the password form -> Grafana's callback."""
    import html
    import http.cookiejar
    import re
    import socket
    import ssl
    import urllib.request

    config = load_config(stack.config)
    real = socket.getaddrinfo
    # The browser's names: Dex's issuer host resolves to loopback (its port is published there).
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: real(
        "127.0.0.1" if host == config.oidc.host else host, *a, **k))
    ca = stack.read_bundle_files("trust/ca.pem")["trust/ca.pem"].decode()
    context = ssl.create_default_context(cadata=ca)
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context),
                                         urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    base = f"https://localhost:{stack.grafana_port}"
    with opener.open(f"{base}/login/generic_oauth", timeout=30) as page:
        url, body = page.geturl(), page.read().decode()
    assert url.startswith(config.oidc.issuer), url  # at Dex's login page
    action = re.search(r'<form[^>]*action="([^"]*)"', body)
    target = urllib.parse.urljoin(url, html.unescape(action.group(1))) if action and action.group(1) else url
    data = urllib.parse.urlencode({"login": email, "password": password}).encode()
    with opener.open(target, data=data, timeout=30) as landed:
        assert landed.geturl().startswith(base), landed.geturl()  # back at Grafana, logged in

    def get(path: str) -> dict | list:
        with opener.open(base + path, timeout=30) as response:
            return json.loads(response.read())
    return get


def test_grafana_logs_in_through_dex_and_loads_the_dashboard(running_stack, monkeypatch):
    if GRAFANA_ABSENT in running_stack.compose_files:
        pytest.skip(f"Grafana image {grafana_image()} not available here (no registry; Grafana is not a Debian "
                    "package and its frontend needs a Node build): the Dex login and the dashboard load are NOT "
                    "checked in this run; its files are (tests/unit/test_grafana_provisioning.py)")
    get = grafana_session(running_stack, monkeypatch, "reader@example.com", running_stack.reader_password)
    assert get("/api/user")["email"] == "reader@example.com"
    assert [org["role"] for org in get("/api/user/orgs")] == ["Viewer"]  # default:read only: no admin
    dashboard = get("/api/dashboards/uid/temporal-bundle-server")["dashboard"]
    assert any("expiry" in panel["title"] for panel in dashboard["panels"])
    up = get("/api/datasources/proxy/uid/temporal-bundle-prometheus/api/v1/query?query=" + urllib.parse.quote('up{job="temporal"}'))
    assert up["status"] == "success" and up["data"]["result"][0]["value"][1] == "1", up
