"""export-helm carries the compose bundle's PKI across: a client certificate and a token taken from
the exported Secrets are what the real server, configured by render-config, accepts."""

from __future__ import annotations

import shutil
import subprocess

import yaml

from bootstrap.core import pki
from tests.export.conftest import secrets_of
from tests.harness import run_cli, temporal_cli

ROLE_SECRET = "temporal-bundle-role-client"


def _export_for_kubernetes(cluster, tmp_path):
    """The cluster's own bundle, copied, switched to PostgreSQL (the chart runs no SQLite) and
    completed by generate-certs with the same CAs, then exported."""
    root = tmp_path / "bundle"
    shutil.copytree(cluster.bundle, root)
    config = cluster.bundle_config()
    # The shard count stays: the bundle remembers what its database was created with.
    shards = config["persistence"]["num_history_shards"]
    config["persistence"] = {"driver": "postgres", "host": "postgresql", "num_history_shards": shards}
    config["bundle_dir"] = str(root)
    config_path = tmp_path / "bundle.yaml"
    config_path.write_text(yaml.safe_dump(config))
    run_cli("generate-certs", "--config", str(config_path), "--out", str(root), "-q")
    dest = tmp_path / "export"
    run_cli("export-helm", "--config", str(config_path), "--out", str(root), "--dest", str(dest), "-q")
    return dest


def _files(secret: dict, tmp_path, names: dict) -> dict:
    paths = {}
    for role, key in names.items():
        paths[role] = tmp_path / f"{role}-{key}"
        paths[role].write_bytes(secret[key])
    return paths


def _call(cluster, files: dict, token: str) -> subprocess.CompletedProcess:
    argv = [temporal_cli(), "--address", cluster.address, "--tls-server-name", "localhost",
            "--tls-ca-path", str(files["ca"]), "--tls-cert-path", str(files["cert"]),
            "--tls-key-path", str(files["key"]), "--api-key", token,
            "workflow", "list", "--namespace", "default", "--limit", "1"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_exported_client_credentials_are_the_compose_pki(sqlite_cluster, tmp_path):
    exported = secrets_of(_export_for_kubernetes(sqlite_cluster, tmp_path))
    secret = exported[ROLE_SECRET]
    files = _files(secret, tmp_path, {"ca": "ca.pem", "cert": "client.pem", "key": "client.key"})
    token = secret["client.jwt"].decode().strip()

    # The client certificate chains to a CA the compose server's frontend trusts.
    server_config = yaml.safe_load((sqlite_cluster.bundle / "config/temporal.yaml").read_text())
    trusted = [c for f in server_config["global"]["tls"]["frontend"]["server"]["clientCaFiles"]
               for c in pki.load_certs(open(f, "rb").read(), f)]
    cert = pki.load_cert(secret["client.pem"], "exported client cert")
    assert any(pki.signed_by(cert, ca) for ca in trusted)

    # And the real server accepts the exported certificate with the exported token.
    result = _call(sqlite_cluster, files, token)
    assert result.returncode == 0, result.stderr

    # admin-tools, configured from its own Secret: a client-domain certificate and the system token.
    admin = exported["temporal-bundle-admintools"]
    admin_files = _files(admin, tmp_path, {"ca": "ca.crt", "cert": "tls.crt", "key": "tls.key"})
    result = _call(sqlite_cluster, admin_files, admin["token"].decode())
    assert result.returncode == 0, result.stderr

    # The call is checked: the same certificate with a token whose signature is broken is denied.
    head, body, signature = token.split(".")
    forged = f"{head}.{body}.{signature[:-4]}{'AAAA' if signature[-4:] != 'AAAA' else 'BBBB'}"
    denied = _call(sqlite_cluster, files, forged)
    assert denied.returncode != 0 and "unauthorized" in denied.stderr.lower() + denied.stdout.lower(), denied.stderr
