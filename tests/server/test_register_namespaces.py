"""register-namespaces against the real server: idempotent, drift reported or applied, and a
clear non-zero exit on authorization and TLS failures."""

from __future__ import annotations

import shutil

import yaml

from tests.support.binaries import run_cli


def _config_with(cluster, tmp_path, **namespace_overrides):
    doc = yaml.safe_load(cluster.config_path.read_text())
    for ns in doc["namespaces"]:
        ns.update(namespace_overrides.get(ns["name"], {}))
    for name, body in namespace_overrides.items():
        if name not in {ns["name"] for ns in doc["namespaces"]}:
            doc["namespaces"].append({"name": name, **body})
    path = tmp_path / "bundle.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def register(cluster, config, *extra, out=None):
    return run_cli("register-namespaces", "--config", str(config), "--out", str(out or cluster.bundle),
                   "--address", cluster.address, "--timeout", "20", *extra, check=False)


def test_rerun_is_idempotent(sqlite_cluster):
    result = register(sqlite_cluster, sqlite_cluster.config_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("already exists, skipped") == 2


def test_retention_drift_is_reported_then_applied(sqlite_cluster, tmp_path):
    config = _config_with(sqlite_cluster, tmp_path, other={"retention": "5d"})
    reported = register(sqlite_cluster, config)
    assert reported.returncode == 0, reported.stderr
    assert "retention is 3d on the server, 5d in the config" in reported.stdout
    applied = register(sqlite_cluster, config, "--update-retention")
    assert "updated" in applied.stdout
    again = register(sqlite_cluster, config)
    assert "namespace other: exists" in again.stdout
    register(sqlite_cluster, sqlite_cluster.config_path, "--update-retention")  # back to 3d for other tests


def test_a_token_without_admin_cannot_register(sqlite_cluster, tmp_path):
    config = _config_with(sqlite_cluster, tmp_path, fresh={"retention": "2d"})
    result = register(sqlite_cluster, config, "--role", "client")
    assert result.returncode == 1
    assert result.stderr.startswith("error: namespace fresh: PERMISSION_DENIED")
    assert len(result.stderr.strip().splitlines()) == 1


def test_tls_failure_is_a_clear_timeout_error(sqlite_cluster, tmp_path):
    foreign = tmp_path / "foreign"
    run_cli("init", "--config", str(sqlite_cluster.config_path), "--out", str(foreign))
    result = run_cli("register-namespaces", "--config", str(sqlite_cluster.config_path), "--out", str(foreign),
                     "--address", sqlite_cluster.address, "--timeout", "3", check=False)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: frontend {sqlite_cluster.address} not ready after 3s")
    assert len(result.stderr.strip().splitlines()) == 1


def test_unknown_role_fails_before_any_network_traffic(sqlite_cluster):
    result = register(sqlite_cluster, sqlite_cluster.config_path, "--role", "nope")
    assert result.returncode == 1 and "unknown role 'nope'" in result.stderr
