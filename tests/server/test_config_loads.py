"""The rendered configuration is exactly what the real server understands: no unknown keys (the
server would silently ignore them), a dynamic config with only registered keys of the right type,
and a clean start."""

from __future__ import annotations

import json
import subprocess

import pytest

from bootstrap.cli import main
from tests.support.binaries import configcheck_bin, temporal_bin_dir


def test_rendered_server_config_has_no_unknown_keys(cluster):
    result = subprocess.run([str(configcheck_bin()), str(cluster.bundle / "config/temporal.yaml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_production_defaults_have_no_unknown_keys(tmp_path):
    (tmp_path / "bundle.yaml").write_text("namespaces: [{name: default}]\n")
    assert main(["render-config", "--config", str(tmp_path / "bundle.yaml"), "--out", str(tmp_path / "out")]) == 0
    result = subprocess.run([str(configcheck_bin()), str(tmp_path / "out/config/temporal.yaml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_configcheck_catches_a_misspelt_key(tmp_path, sqlite_cluster):
    text = (sqlite_cluster.bundle / "config/temporal.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("refreshInterval:", "refreshIntervall:", 1))
    result = subprocess.run([str(configcheck_bin()), str(bad)], capture_output=True, text=True)
    assert result.returncode != 0 and "refreshIntervall" in result.stderr


def test_dynamic_config_passes_server_validation(sqlite_cluster, tmp_path):
    validate = [str(temporal_bin_dir() / "temporal-server"), "validate-dynamic-config"]
    good = subprocess.run([*validate, str(sqlite_cluster.bundle / "config/dynamic_config.yaml")], capture_output=True, text=True)
    assert good.returncode == 0 and "warning" not in good.stdout + good.stderr, good.stdout + good.stderr
    # The validator reports problems as warnings with exit 0, so prove the check above can fail.
    bad = tmp_path / "bad.yaml"
    bad.write_text("limit.maxIDLength:\n  - value: not-a-number\nno.such.key:\n  - value: 1\n")
    out = subprocess.run([*validate, str(bad)], capture_output=True, text=True)
    assert "warning" in out.stdout + out.stderr


# (message, error) pairs the server logs at error level while it is still starting, whatever the
# config. A history queue reader that runs before its shard is acquired gets ErrShardStatusUnknown
# ("may be returned during short windows at initialization", service/history/shard/context_impl.go)
# and retries with backoff; on PostgreSQL that window is wide enough to be hit now and then.
# The harness polls the frontend's health until it answers (the CLI's connect calls GetSystemInfo
# first); a poll that arrives before the frontend is up gets, and the server logs, "not healthy yet".
STARTUP_TRANSIENTS = {("Queue reader unable to retrieve tasks", "shard status unknown"),
                      ("service failures", "Frontend is not healthy yet")}
# The internal-frontend's HTTP API is off on purpose (it would take the frontend's TLS settings and
# give system admin to any client certificate); the server warns that Nexus over HTTP is then off
# on that service. Tolerated for the internal-frontend only.
NEXUS_HTTP_OFF = "HTTP API port has not been set. Nexus HTTP endpoints will not be available"


def _expected_warning(entry: dict) -> bool:
    return entry.get("level") == "warn" and entry.get("internal-frontend") is True and entry.get("msg", "").startswith(NEXUS_HTTP_OFF)


def startup_problems(log: str) -> list[str]:
    problems = []
    for line in log.splitlines():
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        if entry.get("level") not in ("warn", "error", "fatal", "dpanic"):
            continue
        if entry.get("level") == "error" and (entry.get("msg"), entry.get("error")) in STARTUP_TRANSIENTS:
            continue
        if _expected_warning(entry):
            continue
        problems.append(line)
    return problems


def test_server_starts_without_warnings_or_errors(cluster):
    problems = startup_problems(cluster.startup_log)
    assert not problems, "\n".join(problems[:10])


def test_only_the_named_startup_transient_is_tolerated():
    def line(level, msg, error):
        return json.dumps({"level": level, "msg": msg, "error": error})

    transient = line("error", "Queue reader unable to retrieve tasks", "shard status unknown")
    other_error = line("error", "Queue reader unable to retrieve tasks", "context deadline exceeded")
    as_warning = line("warn", "Queue reader unable to retrieve tasks", "shard status unknown")
    fatal = line("fatal", "Unable to start server", "shard status unknown")
    assert startup_problems("\n".join([transient, "plain text", transient])) == []
    assert startup_problems("\n".join([transient, other_error, as_warning, fatal])) == [other_error, as_warning, fatal]
    nexus_off = {"level": "warn", "msg": NEXUS_HTTP_OFF + ". To enable Nexus, ...", "internal-frontend": True}
    on_the_public_frontend = json.dumps({**nexus_off, "internal-frontend": False})
    assert startup_problems(json.dumps(nexus_off)) == []
    assert startup_problems(on_the_public_frontend) == [on_the_public_frontend]


@pytest.mark.parametrize("key", ["tls", "authorization"])
def test_security_blocks_are_live_in_rendered_config(sqlite_cluster, key):
    import yaml

    doc = yaml.safe_load((sqlite_cluster.bundle / "config/temporal.yaml").read_text())
    block = doc["global"][key]
    if key == "tls":
        assert block["frontend"]["server"]["requireClientAuth"] is True
        assert block["internode"]["server"]["requireClientAuth"] is True
        assert block["refreshInterval"] and block["expirationChecks"]["warningWindow"]
    else:
        assert block["jwtKeyProvider"]["keySourceURIs"][0].startswith("https://")
        assert block["permissionsClaimName"] == "groups"
    assert "internal-frontend" in doc["services"]
    assert "publicClient" not in doc
