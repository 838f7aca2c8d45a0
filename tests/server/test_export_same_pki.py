"""export-helm carries the compose bundle's PKI across: a client certificate and a token taken from
the exported Secrets are what the real server, configured by render-config, accepts; and the real
server, given the TLS section chart 1.6.0 composes from the exported values and the files of the
Secrets mounted where the values say, serves mutual TLS on the frontend and internode listeners."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from bootstrap.core import pki
from tests.support import chart
from tests.support.exports import secrets_of
from tests.support.cluster import LocalCluster
from tests.support.binaries import run_cli, temporal_cli

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


# --------------------------------------------------------------------------- the chart's server TLS

MOUNT_ROOT = "/etc/temporal/tls"


def _with_the_charts_server_tls(cluster) -> None:
    """after_init: the server's global.tls replaced by what chart 1.6.0 composes from the exported
    values (tests/support/chart.py), every file read from the exported Secret mounted there (the
    mounts re-rooted under the work dir)."""
    dest = _export_for_kubernetes(cluster, cluster.workdir / "k8s")
    values, secrets = yaml.safe_load((dest / "values.yaml").read_text()), secrets_of(dest)
    root = cluster.workdir / "mounted"
    for mount, (secret, _) in chart.server_mounts(values).items():
        directory = root / mount.lstrip("/")
        directory.mkdir(parents=True)
        for key, data in secrets[secret].items():
            (directory / key).write_bytes(data)
    tls_text = yaml.safe_dump(chart.server_config(values)["global"]["tls"])
    assert MOUNT_ROOT in tls_text
    config_path = cluster.bundle / "config/temporal.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["global"]["tls"] = yaml.safe_load(tls_text.replace(MOUNT_ROOT, str(root / MOUNT_ROOT.lstrip("/"))))
    config_path.write_text(yaml.safe_dump(config))


@pytest.fixture(scope="module")
def chart_tls_cluster(tmp_path_factory):
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster-chart-tls"), namespaces=("default",),
                           after_init=_with_the_charts_server_tls)
    try:
        yield cluster.start()  # healthy: the frontend served our client over the chart's TLS files
    finally:
        cluster.stop()


def _health(address: str, *tls: str) -> subprocess.CompletedProcess:
    argv = [temporal_cli(), "--address", address, *tls, "--command-timeout", "15s", "operator", "cluster", "health"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_the_server_runs_on_the_charts_tls_files(chart_tls_cluster):
    tls = yaml.safe_load((chart_tls_cluster.bundle / "config/temporal.yaml").read_text())["global"]["tls"]
    mounted = str(chart_tls_cluster.workdir / "mounted")
    for group in ("frontend", "internode"):
        assert tls[group]["server"]["certFile"].startswith(mounted), group
    # Every service joined (internode mTLS, membership over TLS) and the system worker reached the
    # internal-frontend: the cluster answers healthy through the frontend.
    assert chart_tls_cluster.healthy()


def test_the_charts_frontend_refuses_plaintext_and_callers_without_a_certificate(chart_tls_cluster):
    bundle = chart_tls_cluster.bundle
    ca = ["--tls-ca-path", str(bundle / "trust/ca.pem"), "--tls-server-name", "localhost"]
    assert _health(chart_tls_cluster.address).returncode != 0  # plaintext
    assert _health(chart_tls_cluster.address, "--tls", *ca).returncode != 0  # TLS, no client certificate


def test_the_charts_internal_frontend_admits_internode_certificates_only(chart_tls_cluster):
    bundle, config = chart_tls_cluster.bundle, chart_tls_cluster.bundle_config()
    address = f"localhost:{config['network']['internal_frontend_port']}"
    internode_ca = ["--tls-ca-path", str(bundle / "trust/internode/ca.pem"),
                    "--tls-server-name", "internode.temporal.internal"]
    client_cert = ["--tls-cert-path", str(bundle / "clients/system.pem"), "--tls-key-path", str(bundle / "clients/system.key")]
    internode_cert = ["--tls-cert-path", str(bundle / "server/internode.pem"), "--tls-key-path", str(bundle / "server/internode.key")]
    assert _health(address).returncode != 0  # plaintext
    assert _health(address, *internode_ca, *client_cert).returncode != 0  # a client-domain certificate
    admitted = _health(address, *internode_ca, *internode_cert)
    assert admitted.returncode == 0 and "SERVING" in admitted.stdout, admitted.stderr
