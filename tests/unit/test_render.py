"""The rendered Temporal server config: valid YAML with mTLS everywhere, JWT authorization against
an https JWKS, internal-frontend, hot reload and expiry checks; template mistakes are one-line
errors, never silently empty strings."""

from __future__ import annotations

import copy
import shutil

import pytest
import yaml
from hypothesis import given, settings

from bootstrap.core.config import parse_config
from bootstrap.core.tls_guard import require_closed_tls, tls_problems
from bootstrap.errors import BundleError
from bootstrap.ops.render import GENERATED_MARK, default_templates_dir, render_all
from tests.support.tls_shapes import WEAKENINGS, weakened, weakenings
from tests.support.bundles import make_bundle, run_main, snapshot


@pytest.fixture(scope="module")
def server_config(ec_bundle) -> dict:
    return yaml.safe_load((ec_bundle.layout.config_dir / "temporal.yaml").read_text())


def test_every_output_has_the_generated_header(ec_bundle):
    for name in ("temporal.yaml", "dynamic_config.yaml", "compose.env"):
        first = (ec_bundle.layout.config_dir / name).read_text().splitlines()[0]
        assert first.startswith("# " + GENERATED_MARK), name
        assert "bundle.yaml" in first


def test_temporal_yaml_parses(server_config):
    assert isinstance(server_config, dict)
    assert {"persistence", "global", "services", "clusterMetadata"} <= set(server_config)


def test_authorization_block(server_config):
    auth = server_config["global"]["authorization"]
    uris = auth["jwtKeyProvider"]["keySourceURIs"]
    # Ours for role tokens, Dex's for Web UI users (oidc is on by default).
    assert uris == ["https://jwks:8443/jwks.json", "https://auth.localhost:5556/dex/keys"]
    assert all(uri.startswith("https://") for uri in uris)
    assert auth["jwtKeyProvider"]["refreshInterval"] == "1m"
    # Dex puts a user's groups in `groups`; role tokens carry their permissions there too.
    assert auth["permissionsClaimName"] == "groups"
    assert auth["authorizer"] == "default"
    assert auth["claimMapper"] == "default"
    assert auth["audience"] == "temporal"


def test_internal_frontend_service_and_no_public_client(server_config):
    services = server_config["services"]
    assert {"frontend", "internal-frontend", "history", "matching", "worker"} <= set(services)
    rpc = services["internal-frontend"]["rpc"]
    # No HTTP API on the internal-frontend: it would take the frontend's TLS settings (client CA)
    # and hand system admin to any client certificate.
    assert rpc["grpcPort"] == 7236 and rpc["httpPort"] == 0 and rpc["membershipPort"] == 6936
    assert services["frontend"]["rpc"]["grpcPort"] == 7233
    # Only the frontend listens beyond loopback; everything internal stays in the container.
    assert services["frontend"]["rpc"]["bindOnIP"] == "0.0.0.0"
    for name in ("internal-frontend", "history", "matching", "worker"):
        assert services[name]["rpc"]["bindOnIP"] == "127.0.0.1", name
    assert server_config["global"]["metrics"]["prometheus"]["listenAddress"].startswith("127.0.0.1:")
    # With internal-frontend the system worker must not be pointed at the public frontend.
    assert not server_config.get("publicClient")


def test_tls_block(server_config):
    tls = server_config["global"]["tls"]
    assert tls["refreshInterval"] == "1m"
    checks = tls["expirationChecks"]
    assert set(checks) == {"warningWindow", "errorWindow", "checkInterval"}
    assert checks["warningWindow"] == "720h"  # renew_before 30d, in Go syntax
    internode = ["/bundle/trust/internode/current.pem", "/bundle/trust/internode/next.pem"]
    for group in ("internode", "frontend"):
        assert tls[group]["server"]["requireClientAuth"] is True, group
    # Per TLS group only the roots that group needs (one trust domain each).
    assert tls["internode"]["server"]["clientCaFiles"] == internode
    assert tls["internode"]["client"]["rootCaFiles"] == internode
    assert tls["systemWorker"]["client"]["rootCaFiles"] == internode
    assert tls["frontend"]["server"]["clientCaFiles"] == ["/bundle/trust/client/current.pem", "/bundle/trust/client/next.pem"]
    assert tls["frontend"]["client"]["rootCaFiles"] == ["/bundle/trust/current.pem", "/bundle/trust/next.pem"]
    assert tls["frontend"]["server"]["certFile"] == "/bundle/server/frontend.pem"
    assert tls["internode"]["server"]["certFile"] == "/bundle/server/internode.pem"
    assert tls["internode"]["client"]["serverName"] == "internode.temporal.internal"
    assert tls["frontend"]["client"]["serverName"] == "temporal"
    assert tls["systemWorker"]["certFile"] == "/bundle/server/internode.pem"
    assert tls["systemWorker"]["client"]["serverName"] == "internode.temporal.internal"


def test_postgres_persistence_uses_tls_and_cert_auth(server_config):
    stores = server_config["persistence"]["datastores"]
    for name, database in (("default", "temporal"), ("visibility", "temporal_visibility")):
        sql = stores[name]["sql"]
        assert sql["pluginName"] == "postgres12" and sql["databaseName"] == database
        assert sql["tls"]["enabled"] is True and sql["tls"]["enableHostVerification"] is True
        assert sql["tls"]["certFile"] == "/bundle/dbclient/temporal.pem"
        assert sql["tls"]["caFile"] == "/bundle/trust/ca.pem"  # PostgreSQL's server cert: server domain


def test_dynamic_config_and_compose_env_parse(ec_bundle):
    dynamic = yaml.safe_load((ec_bundle.layout.config_dir / "dynamic_config.yaml").read_text())
    assert isinstance(dynamic, dict)
    for key, entries in dynamic.items():
        assert isinstance(entries, list) and all("value" in e for e in entries), key
    assert "system.enableNexus" not in dynamic  # removed in 1.31
    for line in (ec_bundle.layout.config_dir / "compose.env").read_text().splitlines():
        if line and not line.startswith("#"):
            key, sep, _ = line.partition("=")
            assert sep and key.replace("_", "").isalnum(), line


def test_values_follow_the_config():
    config = parse_config(
        {
            "namespaces": [{"name": "default"}],
            "cluster": {"name": "prod", "frontend_host": "temporal.example.com"},
            "jwt": {"refresh_interval": "5m", "audience": "my-aud"},
            "network": {"jwks_host": "keys.internal", "jwks_port": 9443},
            "persistence": {"driver": "sqlite", "sqlite_path": "/data/temporal.db"},
            "oidc": {"host": "sso.example.com", "port": 9556},
            "bundle_dir": "/etc/temporal-bundle",
        },
        source="/x/prod.yaml",
    )
    rendered = yaml.safe_load(render_all(config)["temporal.yaml"])
    auth = rendered["global"]["authorization"]
    assert auth["jwtKeyProvider"]["keySourceURIs"] == [
        "https://keys.internal:9443/jwks.json", "https://sso.example.com:9556/dex/keys"]
    assert auth["jwtKeyProvider"]["refreshInterval"] == "5m"
    assert auth["audience"] == "my-aud"
    assert rendered["clusterMetadata"]["currentClusterName"] == "prod"
    assert rendered["global"]["tls"]["frontend"]["client"]["serverName"] == "temporal.example.com"
    assert rendered["global"]["tls"]["frontend"]["server"]["certFile"] == "/etc/temporal-bundle/server/frontend.pem"
    assert rendered["persistence"]["datastores"]["default"]["sql"]["pluginName"] == "sqlite"


def test_rendering_is_deterministic(ec_bundle):
    assert render_all(ec_bundle.config) == render_all(ec_bundle.config)
    assert render_all(ec_bundle.config)["temporal.yaml"] == (ec_bundle.layout.config_dir / "temporal.yaml").read_text()


# --------------------------------------------------------------------------- template errors


@pytest.fixture
def templates(tmp_path):
    directory = tmp_path / "templates"
    shutil.copytree(default_templates_dir(), directory)
    return directory


@pytest.mark.parametrize(
    "addition, fragment",
    [
        ("\nbroken: {{ no_such_variable }}\n", "'no_such_variable' is undefined"),
        ("\nbroken: {{ net.no_such_field }}\n", "no_such_field"),
        ("\n{% if %}\n", "temporal.yaml.j2"),
    ],
    ids=["undefined-variable", "undefined-attribute", "syntax-error"],
)
def test_template_error_is_one_line_and_writes_nothing(templates, addition, fragment, tmp_path, config_file, cli):
    with open(templates / "temporal.yaml.j2", "a") as f:
        f.write(addition)
    out = tmp_path / "out"
    for command in ("init", "render-config"):
        cli(command, "--config", config_file, "--out", out, "--templates", templates).assert_one_error(
            "template temporal.yaml.j2", fragment
        )
        # Every template renders before any file is written, and the run lock is taken back.
        assert not out.exists()


def test_template_error_from_render_all_is_a_one_line_bundle_error(templates, ec_bundle):
    (templates / "dynamic_config.yaml.j2").write_text("{{ header }}\nx: {{ typo_here }}\n")
    with pytest.raises(BundleError) as exc:
        render_all(ec_bundle.config, templates)
    assert "\n" not in str(exc.value)
    assert "dynamic_config.yaml.j2" in str(exc.value) and "typo_here" in str(exc.value)


def test_missing_templates_directory(tmp_path, config_file, cli):
    cli("render-config", "--config", config_file, "--out", tmp_path / "out", "--templates", tmp_path / "nope").assert_one_error(
        "templates directory", "not found"
    )


def test_templates_dir_from_the_environment(templates, monkeypatch, ec_bundle):
    (templates / "compose.env.j2").write_text("{{ header }}\nFROM_ENV_TEMPLATES=1\n")
    monkeypatch.setenv("BUNDLE_TEMPLATES_DIR", str(templates))
    assert "FROM_ENV_TEMPLATES=1" in render_all(ec_bundle.config)["compose.env"]


def test_config_change_updates_the_generated_files(fresh_bundle):
    fresh_bundle.config_path.write_text(fresh_bundle.config_path.read_text() + "jwt: {refresh_interval: 5m}\n")
    result = fresh_bundle.run("render-config")
    assert result.code == 0, result.err
    assert "wrote config/temporal.yaml: updated: config changed" in result.out
    assert "refreshInterval: 5m" in (fresh_bundle.layout.config_dir / "temporal.yaml").read_text()


def test_readme_security_model_table_is_the_generated_one():
    """The README's listener table is bootstrap/core/security_model.py rendered, never edited by hand."""
    from pathlib import Path

    from bootstrap.core.security_model import markdown_table

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start, end = "<!-- security-model:start -->\n", "<!-- security-model:end -->"
    assert start in readme and end in readme
    assert readme.split(start, 1)[1].split(end, 1)[0] == markdown_table()


def test_membership_runs_over_internode_tls(ec_bundle):
    dynamic = yaml.safe_load((ec_bundle.layout.config_dir / "dynamic_config.yaml").read_text())
    assert dynamic["system.enableRingpopTLS"] == [{"value": True}]


def test_without_oidc_the_server_trusts_only_our_jwks():
    config = parse_config({"oidc": {"enabled": False}})
    auth = yaml.safe_load(render_all(config)["temporal.yaml"])["global"]["authorization"]
    assert auth["jwtKeyProvider"]["keySourceURIs"] == ["https://jwks:8443/jwks.json"]
    assert auth["permissionsClaimName"] == "groups"


# --------------------------------------------------------------------------- TLS fails closed


def test_the_rendered_server_tls_passes_the_guard(server_config):
    assert tls_problems(server_config) == []


@pytest.mark.parametrize("weakening", WEAKENINGS, ids=lambda w: f"{w[1]}:{'.'.join(w[0]) or 'tls'}")
def test_the_guard_finds_every_single_weakening(server_config, weakening):
    config = copy.deepcopy(server_config)
    config["global"]["tls"] = weakened(config["global"]["tls"], {weakening})
    problems = tls_problems(config)
    assert problems, weakening
    with pytest.raises(BundleError) as exc:
        require_closed_tls(config, "temporal.yaml")
    assert "\n" not in str(exc.value) and problems[0] in str(exc.value)


@pytest.mark.parametrize("config", [None, [], "tls", {"global": None}, {"global": {"tls": []}},
                                    {"global": {"tls": {"frontend": "x", "internode": {"server": []}}}}])
def test_the_guard_refuses_shapes_that_are_not_a_config(config):
    assert tls_problems(config)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """A bundle and a templates copy for planting server configs into render-config."""
    directory = tmp_path_factory.mktemp("guard")
    templates = directory / "templates"
    shutil.copytree(default_templates_dir(), templates)
    return make_bundle(directory / "bundle"), templates


def _plant_server_config(templates, config: dict) -> None:
    text = "{{ header }}\n{% raw %}" + yaml.safe_dump(config, sort_keys=False) + "{% endraw %}"
    (templates / "temporal.yaml.j2").write_text(text)


def test_a_planted_good_config_renders(guarded, server_config, tmp_path):
    bundle, templates = guarded
    _plant_server_config(templates, server_config)
    result = run_main("render-config", "--config", bundle.config_path, "--out", bundle.root, "--templates", templates)
    assert result.code == 0, result.err


@settings(max_examples=15)
@given(choices=weakenings())
def test_render_config_refuses_a_server_config_that_fails_open(guarded, server_config, choices):
    bundle, templates = guarded
    config = copy.deepcopy(server_config)
    config["global"]["tls"] = weakened(config["global"]["tls"], choices)
    _plant_server_config(templates, config)
    before = snapshot(bundle.root)
    for command in ("render-config", "init"):
        result = run_main(command, "--config", bundle.config_path, "--out", bundle.root, "--templates", templates)
        result.assert_one_error("temporal.yaml.j2", "fail open")
        assert snapshot(bundle.root) == before
