"""Grafana's files (docker/grafana/, mounted read-only by the compose profile monitoring), checked
as files (tests/unit/test_monitoring.py checks the dashboard's panels too): every dashboard loads as JSON and every panel and query uses the datasource the
profile provisions; that datasource is the profile's Prometheus over the monitoring network; the
login is Dex's generic OAuth with the client the bootstrap renders, its secret read from the
bundle, and the role mapping (evaluated as Grafana does, JMESPath) gives Admin to cluster admins
only. Whether Grafana itself logs in and loads them is tests/docker/test_monitoring_stack.py's check.
"""

from __future__ import annotations

import configparser
import json
import re
from pathlib import Path

from types import SimpleNamespace

import jmespath
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from bootstrap.core.config import load_config
from bootstrap.core.config.oidc import GROUP_NAME
from bootstrap.core.login_groups import grafana_role_path
from bootstrap.ops.oidc import GRAFANA_CLIENT_ID, grafana_role_path_file, grafana_secret_path
from bootstrap.ops.plan import leaf_specs
from bootstrap.store import Layout
from tests.support.bundles import make_bundle

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "docker" / "grafana"
COMPOSE = yaml.safe_load((REPO / "docker-compose.prod.yml").read_text())
SERVICE = COMPOSE["services"]["grafana"]


def datasources() -> list[dict]:
    return yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())["datasources"]


def ini() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string((GRAFANA / "grafana.ini").read_text())
    return parser


def mount_target(source: str) -> str:
    """Where the compose service mounts a path of the repository (read-only, or the test fails)."""
    for volume in SERVICE["volumes"]:
        host, target, *mode = volume.split(":")
        if host == source:
            assert mode == ["ro"], volume
            return target
    raise AssertionError(f"grafana does not mount {source}")


def panels(dashboard: dict):
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panels(panel)  # rows hold panels of their own


DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_panel_and_query_uses_the_provisioned_datasource(path):
    (source,) = datasources()
    dashboard = json.loads(path.read_text())
    assert dashboard["uid"] and dashboard["title"]
    found = list(panels(dashboard))
    assert found, path
    for panel in found:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": source["uid"]}, (path.name, panel["title"])
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", panel["datasource"])["uid"] == source["uid"], (path.name, panel["title"])
            assert target["expr"].strip(), panel["title"]


def exprs() -> str:
    return " ".join(t["expr"] for path in DASHBOARDS for p in panels(json.loads(path.read_text()))
                    for t in p.get("targets", []))


def test_expiry_panels_read_what_the_expiry_exporter_serves():
    served = set(re.findall(r"temporal_bundle_\w+", (REPO / "bootstrap" / "ops" / "expiry_report.py").read_text()))
    used = set(re.findall(r"temporal_bundle_\w+", exprs()))
    assert "temporal_bundle_expiry_timestamp_seconds" in used and "temporal_bundle_item_status" in used
    assert used <= served, used - served


def test_server_panels_read_the_metrics_the_alert_rules_use():
    rules = (REPO / "templates" / "alert-rules.yml.j2").read_text()
    used = exprs()
    for metric in ("service_requests", "service_error_with_type", "persistence_latency_bucket"):
        assert metric in used and metric in rules, metric
    assert 'up{job="temporal"}' in used  # the scrape job of templates/prometheus.yml.j2
    assert "job_name: temporal" in (REPO / "templates" / "prometheus.yml.j2").read_text()


def test_the_datasource_is_the_profiles_prometheus_on_the_monitoring_network():
    (source,) = datasources()
    prometheus = COMPOSE["services"]["prometheus"]
    listen = next(a.split("=", 1)[1] for a in prometheus["command"] if a.startswith("--web.listen-address="))
    assert source["type"] == "prometheus" and source["access"] == "proxy" and source["isDefault"]
    assert source["url"] == f"http://prometheus{listen}"
    assert "monitoring" in prometheus["networks"] and "monitoring" in SERVICE["networks"]
    assert COMPOSE["networks"]["monitoring"]["internal"] is True
    assert "ports" not in prometheus  # reached by Grafana over monitoring, never published


def test_provisioning_and_dashboards_are_mounted_read_only_where_grafana_looks():
    config = ini()
    assert mount_target("./docker/grafana/grafana.ini") == "/etc/grafana/grafana.ini"
    assert mount_target("./docker/grafana/provisioning") == config["paths"]["provisioning"]
    dashboards = mount_target("./docker/grafana/dashboards")
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "temporal-bundle.yml").read_text())
    assert [p["options"]["path"] for p in provider["providers"]] == [dashboards]
    home = config["dashboards"]["default_home_dashboard_path"]
    assert home.startswith(dashboards + "/") and (GRAFANA / "dashboards" / Path(home).name).exists()


def test_login_is_dex_with_the_rendered_client_and_a_secret_from_the_bundle():
    config = load_config(REPO / "bundle.example.yaml")
    oauth = ini()["auth.generic_oauth"]
    assert oauth["enabled"] == "true" and oauth["client_id"] == GRAFANA_CLIENT_ID
    secret = grafana_secret_path(Layout(Path(config.bundle_dir)))
    assert oauth["client_secret"] == f"$__file{{{secret}}}"  # read at start, never in a file in git
    assert mount_target_volume("bundle-grafana") == str(secret.parent)
    for key in ("auth_url", "token_url", "api_url"):
        assert oauth[key].startswith("$__env{OIDC_ISSUER}/"), key
    # Dex's issuer, as the UI names it when Dex runs (with an external issuer Grafana does not run).
    ui_issuer = COMPOSE["services"]["temporal-ui"]["environment"]["TEMPORAL_AUTH_ISSUER_URL"]
    assert ui_issuer == "${OIDC_ISSUER_URL:-" + SERVICE["environment"]["OIDC_ISSUER"] + "}"
    assert SERVICE["scale"] == "${GRAFANA_SCALE:-1}"
    assert oauth["tls_client_ca"] == "/bundle/trust/ca.pem"
    # The redirect URI Dex allows for this client is Grafana's root URL + login/generic_oauth.
    root = SERVICE["environment"]["GRAFANA_ROOT_URL"]
    assert root == "https://${UI_PUBLIC_HOST:-localhost}:${GRAFANA_PORT:-3000}/"
    assert config.grafana_url == f"https://{config.oidc.ui_public_host}:{config.network.grafana_port}" == "https://localhost:3000"
    sections = ini()
    assert sections["auth"]["disable_login_form"] == "true"
    assert sections["auth.anonymous"]["enabled"] == "false" and sections["auth.basic"]["enabled"] == "false"
    assert sections["security"]["disable_initial_admin_creation"] == "true"


def mount_target_volume(volume: str) -> str:
    for entry in SERVICE["volumes"]:
        source, target, *mode = entry.split(":")
        if source == volume:
            assert mode == ["ro"], entry
            return target
    raise AssertionError(volume)


def test_https_with_the_bundles_grafana_leaf():
    config = load_config(REPO / "bundle.example.yaml")
    server = ini()["server"]
    spec = next(s for s in leaf_specs(config) if s.directory == "grafana")
    assert (spec.name, spec.usage, spec.domain) == ("server", "server", "server")
    assert server["protocol"] == "https"
    assert server["cert_file"] == f"/bundle/grafana/{spec.name}.pem" and server["cert_key"] == f"/bundle/grafana/{spec.name}.key"
    assert config.oidc.ui_public_host in spec.sans and "grafana" in spec.sans
    assert SERVICE["ports"] == ["${TEMPORAL_BIND_ADDRESS:-127.0.0.1}:${GRAFANA_PORT:-3000}:3000"]


def local(groups) -> dict:
    """The claims Dex puts in a bundle user's ID token (scope federated:id): mapped permissions."""
    return {"federated_claims": {"connector_id": "local", "user_id": "temporal-bundle-x"}, "groups": groups}


def from_directory(groups, connector: str = "corp") -> dict:
    return {"federated_claims": {"connector_id": connector, "user_id": "alice"}, "groups": groups}


DIRECTORY_CONFIG = """\
namespaces: [{name: payments}]
oidc:
  groups:
    admins: ["temporal-system:admin"]
    "cn=sre,ou=groups,dc=corp,dc=example": ["temporal-system:admin", "payments:admin"]
    payments-oncall: ["payments:write"]
  connectors:
    - {type: ldap, id: corp, name: Corp, config: {host: "ldap.corp.example:636", rootCA: /etc/ca.pem,
       userSearch: {baseDN: "ou=people,dc=corp,dc=example", username: uid, idAttr: uid, emailAttr: mail, nameAttr: cn},
       groupSearch: {baseDN: "ou=groups,dc=corp,dc=example", nameAttr: cn, userMatchers: [{userAttr: DN, groupAttr: member}]}}}
"""


def test_grafana_reads_the_role_mapping_the_bootstrap_renders_from_bundle_yaml(tmp_path):
    oauth = ini()["auth.generic_oauth"]
    assert oauth["role_attribute_strict"] == "true"
    assert "federated:id" in oauth["scopes"].split()  # the token names the user's connector
    assert oauth["role_attribute_path"] == f"$__file{{{grafana_role_path_file(Layout(Path('/bundle')))}}}"
    bundle = make_bundle(tmp_path, DIRECTORY_CONFIG)
    rendered = grafana_role_path_file(bundle.layout).read_text()
    assert rendered == grafana_role_path(bundle.config.oidc) and "cn=sre" in rendered


def test_cluster_admins_are_grafana_admins_and_everyone_else_views():
    """The role mapping evaluated as Grafana evaluates it (JMESPath over the token's claims), with
    the groups Dex puts in the token for the example's users."""
    config = load_config(REPO / "bundle.example.yaml")
    path = grafana_role_path(config.oidc)
    admin = list(config.oidc.permissions_of(config.oidc.admin))
    assert jmespath.search(path, local(admin)) == "Admin"
    for groups in (["orders:read"], ["default:admin"], ["temporal-system:read"], [], None):
        assert jmespath.search(path, local(groups)) == "Viewer", groups
    assert jmespath.search(path, {"groups": admin}) == "Viewer"  # no federated claims: no admin


def test_a_directory_makes_admins_only_through_oidc_groups(tmp_path):
    (tmp_path / "bundle.yaml").write_text(DIRECTORY_CONFIG)
    path = grafana_role_path(load_config(tmp_path / "bundle.yaml").oidc)
    assert jmespath.search(path, from_directory(["staff", "admins"])) == "Admin"
    assert jmespath.search(path, from_directory(["cn=sre,ou=groups,dc=corp,dc=example"])) == "Admin"
    for groups in (["temporal-system:admin"], ["payments-oncall"], ["Admins"], ["cn=sre"], [], None):
        assert jmespath.search(path, from_directory(groups)) == "Viewer", groups
    assert jmespath.search(path, from_directory(["admins"], connector="github")) == "Viewer"
    assert jmespath.search(path, local(["admins"])) == "Viewer"  # a bundle user's groups are permissions
    assert jmespath.search(path, local(["temporal-system:admin"])) == "Admin"


@settings(max_examples=150)
@given(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40).filter(GROUP_NAME.match),
       st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40).filter(GROUP_NAME.match))
def test_any_group_name_is_matched_exactly_in_the_rendered_jmespath(name, other):
    """Quotes, backticks, backslashes, DNs: a mapped name is a literal, never JMESPath syntax."""
    oidc = SimpleNamespace(groups=((name, ("temporal-system:admin",)),), connectors=(SimpleNamespace(id="corp"),))
    path = grafana_role_path(oidc)
    assert jmespath.search(path, from_directory([name])) == "Admin"
    assert jmespath.search(path, from_directory([other])) == ("Admin" if other == name else "Viewer")
