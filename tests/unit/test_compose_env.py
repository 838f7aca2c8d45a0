"""compose-env: the compose variables bundle.yaml decides, and `make up` handing them to compose
(COMPOSE_ENV_FILES), so ports and OIDC names are not matched by hand."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONFIG = """namespaces: [{name: orders}]
jwt: {audience: acme-temporal}
network: {ui_port: 9443}
codec: {port: 9888}
oidc: {host: login.example.com, port: 7556, ui_public_host: temporal.example.com}
"""


def _variables(text: str) -> dict[str, str]:
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def test_compose_env_comes_from_bundle_yaml(tmp_path, cli):
    config = tmp_path / "bundle.yaml"
    config.write_text(CONFIG)
    run = cli("compose-env", "--config", config)
    assert run.code == 0, run.err
    values = _variables(run.out)
    assert {k: values[k] for k in ("OIDC_HOST", "OIDC_PORT", "UI_PUBLIC_HOST", "TEMPORAL_AUDIENCE",
                                   "TEMPORAL_UI_PORT", "CODEC_PORT", "TEMPORAL_DEFAULT_NAMESPACE")} == {
        "OIDC_HOST": "login.example.com", "OIDC_PORT": "7556", "UI_PUBLIC_HOST": "temporal.example.com",
        "TEMPORAL_AUDIENCE": "acme-temporal", "TEMPORAL_UI_PORT": "9443", "CODEC_PORT": "9888",
        "TEMPORAL_DEFAULT_NAMESPACE": "orders"}
    assert not list(tmp_path.glob("certs*")), "compose-env wrote something"


def test_compose_env_refuses_a_bad_config(tmp_path, cli):
    config = tmp_path / "bundle.yaml"
    config.write_text("namespaces: [{name: default}]\noidc: {port: 99999}\n")
    run = cli("compose-env", "--config", config)
    assert run.code != 0 and run.out == "" and run.err.startswith("error: ")


def test_compose_env_refuses_a_ui_without_login(tmp_path, cli):
    config = tmp_path / "bundle.yaml"
    config.write_text("namespaces: [{name: default}]\noidc: {enabled: false}\n")
    run = cli("compose-env", "--config", config)
    assert run.code == 1 and run.out == ""
    assert run.err.strip().startswith("error: oidc.enabled is false and there is no oidc.external")
    assert len(run.err.strip().splitlines()) == 1


def test_compose_env_with_an_external_issuer_runs_no_dex(tmp_path, cli):
    config = tmp_path / "bundle.yaml"
    config.write_text("namespaces: [{name: orders}]\noidc:\n  enabled: false\n  external:\n"
                      "    issuer: https://idp.example.com/realms/acme\n"
                      "    jwks_uri: https://idp.example.com/realms/acme/protocol/openid-connect/certs\n"
                      "    client_id: temporal-ui\n    client_secret_file: /run/secrets/absent-here\n"
                      "    ca_file: /run/secrets/idp-ca.pem\n    scopes: [openid, email, groups]\n")
    run = cli("compose-env", "--config", config)
    assert run.code == 0, run.err  # the secret files are the bootstrap's business, not compose-env's
    values = _variables(run.out)
    assert values["GRAFANA_SCALE"] == "0"  # Grafana's login is the embedded Dex's client
    assert {k: values[k] for k in ("DEX_SCALE", "OIDC_ISSUER_URL", "OIDC_JWKS_URL", "TEMPORAL_AUDIENCE",
                                   "OIDC_SCOPES", "OIDC_USE_ID_TOKEN", "OIDC_CA_DIRS")} == {
        "DEX_SCALE": "0", "OIDC_ISSUER_URL": "https://idp.example.com/realms/acme",
        "OIDC_JWKS_URL": "https://idp.example.com/realms/acme/protocol/openid-connect/certs",
        "TEMPORAL_AUDIENCE": "temporal-ui", "OIDC_SCOPES": "openid,email,groups", "OIDC_USE_ID_TOKEN": "false",
        "OIDC_CA_DIRS": "/bundle/trust/oidc-issuer:/etc/ssl/certs"}


def test_compose_env_with_dex_runs_one(tmp_path, cli):
    config = tmp_path / "bundle.yaml"
    config.write_text(CONFIG)
    values = _variables(cli("compose-env", "--config", config).out)
    assert values["DEX_SCALE"] == "1" and values["OIDC_ISSUER_URL"] == "https://login.example.com:7556/dex"
    assert values["GRAFANA_SCALE"] == "1"
    assert values["OIDC_JWKS_URL"] == "https://login.example.com:7556/dex/keys"


def test_compose_file_takes_the_login_issuer_from_the_env_file(tmp_path):
    """docker compose config with the rendered variables: Dex scaled to 0, the UI, the codec and
    the server pointed at the external issuer (the real compose CLI reads the file)."""
    env_file = tmp_path / "external.env"
    env_file.write_text("DEX_SCALE=0\nOIDC_ISSUER_URL=https://idp.example.com/a\nOIDC_JWKS_URL=https://idp.example.com/keys\n"
                        "TEMPORAL_AUDIENCE=temporal-ui\nOIDC_SCOPES=openid,email\nOIDC_USE_ID_TOKEN=true\n"
                        "OIDC_CA_DIRS=/bundle/trust/oidc-issuer:/etc/ssl/certs\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "BUNDLE_", "COMPOSE_", "OIDC_", "DEX_"))}
    env.update(BUNDLE_CONFIG_FILE=str(REPO / "bundle.example.yaml"), COMPOSE_ENV_FILES=str(env_file))
    out = subprocess.run(["docker", "compose", "-f", "docker-compose.prod.yml", "config", "--format", "json"], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=60, check=True).stdout
    services = json.loads(out)["services"]
    assert services["dex"]["scale"] == 0
    ui = services["temporal-ui"]["environment"]
    assert ui["TEMPORAL_AUTH_PROVIDER_URL"] == ui["TEMPORAL_AUTH_ISSUER_URL"] == "https://idp.example.com/a"
    assert (ui["TEMPORAL_AUTH_CLIENT_ID"], ui["TEMPORAL_AUTH_SCOPES"]) == ("temporal-ui", "openid,email")
    assert ui["TEMPORAL_AUTH_USE_ID_TOKEN_AS_BEARER"] == "true"
    assert ui["SSL_CERT_DIR"] == services["temporal"]["environment"]["SSL_CERT_DIR"] == "/bundle/trust/oidc-issuer:/etc/ssl/certs"
    codec = services["codec-server"]["command"]
    assert "--jwks-url=https://idp.example.com/keys" in codec and "--issuer=https://idp.example.com/a" in codec
    # Without the file: Dex, as before.
    env.pop("COMPOSE_ENV_FILES")
    default = json.loads(subprocess.run(["docker", "compose", "-f", "docker-compose.prod.yml", "config", "--format", "json"],
                                        cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=True).stdout)
    assert default["services"]["dex"]["scale"] == 1
    assert default["services"]["temporal-ui"]["environment"]["TEMPORAL_AUTH_ISSUER_URL"] == "https://auth.localhost:5556/dex"
    assert default["services"]["temporal"]["environment"]["SSL_CERT_DIR"] == ""


def _make_n(*args: str, **env: str) -> str:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "BUNDLE_", "COMPOSE_", "IMAGES_ENV"))}
    base.update(BUNDLE_CONFIG_FILE=str(REPO / "bundle.example.yaml"), **env)
    return subprocess.run(["make", "--no-print-directory", "-n", *args], cwd=REPO, env=base,
                          capture_output=True, text=True, timeout=60, check=True).stdout


def test_make_up_renders_the_env_file_and_hands_it_to_compose():
    out = _make_n("up", COMPOSE_PROJECT_NAME="acme")
    assert "compose-env --config /etc/temporal-bundle/bundle.yaml > \"build/acme.env.tmp\"" in out
    assert 'mv "build/acme.env.tmp" "build/acme.env"' in out
    # bundle.yaml's values come after ./.env (compose: later files win; the shell wins over both).
    assert 'export COMPOSE_ENV_FILES="' in out and 'build/acme.env"' in out


def test_make_adds_the_pkcs11_override_when_bundle_yaml_says_pkcs11(tmp_path, cli):
    """compose-env says which key backend bundle.yaml chose; every make target that runs compose
    then reads docker-compose.pkcs11.yml too (the token's volume and PIN), and only then."""
    config = tmp_path / "bundle.yaml"
    config.write_text("namespaces: [{name: default}]\nkeys:\n  backend: pkcs11\n  pkcs11:\n"
                      "    module: /usr/lib/softhsm/libsofthsm2.so\n    token_label: tb\n    pin_file: /run/secrets/hsm-pin\n")
    run = cli("compose-env", "--config", config)
    assert run.code == 0, run.err
    values = _variables(run.out)
    assert (values["BUNDLE_KEYS_BACKEND"], values["HSM_PIN_PATH"], values["SOFTHSM_TOKEN_LABEL"]) == (
        "pkcs11", "/run/secrets/hsm-pin", "tb")
    env_file = tmp_path / "acme.env"
    env_file.write_text(run.out)
    rotate = _make_n("rotate", BUNDLE_ENV_FILE=str(env_file))
    assert "docker compose -f docker-compose.prod.yml -f docker-compose.pkcs11.yml run --rm --no-deps bootstrap rotate" in rotate
    env_file.write_text(cli("compose-env", "--config", REPO / "bundle.example.yaml").out)
    assert "BUNDLE_KEYS_BACKEND=file" in env_file.read_text()
    rotate = _make_n("rotate", BUNDLE_ENV_FILE=str(env_file))
    assert "docker-compose.pkcs11.yml" not in rotate and "docker compose -f docker-compose.prod.yml run" in rotate
