"""compose-env: the compose variables bundle.yaml decides, and `make up` handing them to compose
(COMPOSE_ENV_FILES), so ports and OIDC names are not matched by hand."""

from __future__ import annotations

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
    assert run.err.strip().startswith("error: oidc.enabled is false: the compose stack's Web UI logs in through Dex")
    assert len(run.err.strip().splitlines()) == 1


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
