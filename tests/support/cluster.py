"""Real infrastructure for tests and benchmarks: the temporal-server binary built from the Go
module, a JWKS server, Debian's PostgreSQL with TLS + certificate auth, all on loopback.

The server config is the bundle's own template rendered with loopback addresses: only addresses
differ from production. Nothing here skips: if a binary is missing the caller gets an exception.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.support.binaries import run_cli, temporal_bin_dir, temporal_cli
from tests.support.ports import free_port, free_port_block
from tests.support.postgres import PostgresServer
from tests.support.waits import HarnessError, wait_until

SERVICES = ("frontend", "internal-frontend", "history", "matching", "worker")


@dataclass
class LocalCluster:
    """The bundle rendered for loopback and the real temporal-server started from it."""

    workdir: Path
    driver: str = "sqlite"
    secure: bool = True
    namespaces: tuple[str, ...] = ("default", "other")
    extra_roles: dict = field(default_factory=dict)
    token_lifetime: str = "24h"
    jwks_refresh: str = "1m"
    processes: list = field(default_factory=list)
    postgres: PostgresServer | None = None
    # Called with the cluster after `init`, before anything starts: lets a test reshape the
    # bundle (e.g. into the one-CA layout of bundles made before trust domains).
    after_init: object = None
    # bundle.yaml's `keys:` section, e.g. the pkcs11 backend (tests/server/test_pkcs11_cluster.py).
    keys: dict | None = None
    # bundle.yaml's `oidc:` section; default: no UI login (tests/server/test_external_issuer.py
    # sets an external issuer).
    oidc: dict | None = None

    @property
    def bundle(self) -> Path:
        return self.workdir / "bundle"

    @property
    def config_path(self) -> Path:
        return self.workdir / "bundle.yaml"

    @property
    def address(self) -> str:
        return f"localhost:{self.base}"

    def bundle_config(self) -> dict:
        base = self.base
        writes = [f"{ns}:write" for ns in self.namespaces]
        roles = {
            "system": {"permissions": ["temporal-system:admin"], "token_lifetime": self.token_lifetime},
            "worker": {"permissions": writes, "token_lifetime": self.token_lifetime},
            "client": {"permissions": writes, "token_lifetime": self.token_lifetime},
            **self.extra_roles,
        }
        # 4 shards, not the production 512: these tests do not depend on the count, and a
        # single-connection SQLite would acquire 512 shards one after the other at every start.
        persistence = {"driver": self.driver, "num_history_shards": 4}
        if self.driver == "sqlite":
            persistence["sqlite_path"] = str(self.workdir / "temporal.db")
        else:
            persistence.update(host="localhost", port=self.postgres.port)
        return {
            "cluster": {"name": "local", "frontend_host": "localhost"},
            "namespaces": [{"name": ns, "retention": "3d"} for ns in self.namespaces],
            "roles": roles,
            "jwt": {"refresh_interval": self.jwks_refresh},
            "network": {
                "bind_ip": "127.0.0.1",
                "broadcast_address": "127.0.0.1",
                "frontend_port": base,
                "frontend_http_port": base + 1,
                "internal_frontend_port": base + 2,
                "internal_frontend_http_port": base + 3,
                "history_port": base + 4,
                "matching_port": base + 5,
                "worker_port": base + 6,
                "metrics_port": base + 7,
                "jwks_host": "localhost",
                "jwks_port": self.jwks_port,
            },
            "persistence": persistence,
            # No Dex here: the server would wait for its JWKS (every key source must answer).
            # The docker tier runs the stack with Dex.
            "oidc": self.oidc or {"enabled": False},
            "bundle_dir": str(self.bundle),
            **({"keys": self.keys} if self.keys else {}),
        }

    def start(self, timeout: float = 120) -> "LocalCluster":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.base, self.jwks_port = free_port_block(8), free_port()
        bins = temporal_bin_dir()
        if self.driver == "postgres":
            # Its own directory: pytest's tmp dirs are 0700 root, which the postgres user cannot enter.
            self.postgres = PostgresServer(Path(tempfile.mkdtemp(prefix="bundle-pg-")), self.bundle)
        self.write_config()
        run_cli("init", "--config", str(self.config_path), "--out", str(self.bundle))
        if self.after_init:
            self.after_init(self)
        if self.postgres:
            self.postgres.start()
            self.postgres.setup_schema(bins / "temporal-sql-tool", ("temporal", "temporal_visibility"))
        server_config = self.bundle / "config" / "temporal.yaml"
        if not self.secure:
            server_config = self._plaintext_config(server_config)
        self.start_jwks()
        env = {**os.environ, "SSL_CERT_FILE": str(self.bundle / "trust" / "ca.pem")}
        issuer_ca_dir = self.bundle / "trust" / "oidc-issuer"
        if issuer_ca_dir.is_dir():  # as compose-env's OIDC_CA_DIRS: the external issuer's CA next to the public ones
            env["SSL_CERT_DIR"] = f"{issuer_ca_dir}:/etc/ssl/certs"
        argv = [str(bins / "temporal-server"), "--config-file", str(server_config), "start"]
        for service in SERVICES:
            argv += ["--service", service]
        self.server_log = self.workdir / "temporal-server.log"
        self._server_argv, self._server_env = argv, env
        self.server_process = self._spawn(argv, self.server_log, env)
        wait_until(self.healthy, timeout, "temporal frontend health", interval=0.5)
        self.startup_log = self.server_log.read_text(errors="replace")
        return self

    def restart_server(self, timeout: float = 120) -> None:
        """Stop temporal-server (SIGTERM, as `docker compose restart` does) and start it again."""
        old = self.server_process
        os.killpg(old.pid, signal.SIGTERM)
        old.wait(30)
        self.processes.remove(old)
        self.server_process = self._spawn(self._server_argv, self.server_log, self._server_env)
        wait_until(self.healthy, timeout, "temporal frontend health after a restart", interval=0.5)

    def write_config(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.bundle_config(), sort_keys=False))

    def start_jwks(self) -> None:
        argv = [sys.executable, "-m", "bootstrap", "serve-jwks", "--out", str(self.bundle), "--host", "127.0.0.1",
                "--port", str(self.jwks_port)]
        self.jwks_process = self._spawn(argv, self.workdir / "jwks.log", dict(os.environ))
        ctx = ssl.create_default_context(cafile=str(self.bundle / "trust" / "ca.pem"))
        url = f"https://localhost:{self.jwks_port}/healthz"
        wait_until(lambda: urllib.request.urlopen(url, context=ctx, timeout=2).status == 200, 20, "JWKS server")

    def _spawn(self, argv, log: Path, env) -> subprocess.Popen:
        process = subprocess.Popen(argv, stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.processes.append(process)
        return process

    def _plaintext_config(self, secure_config: Path) -> Path:
        """The baseline for benchmarks only: frontend and internode TLS and the authorizer removed.
        The database connection stays exactly as in production (TLS + client certificate: the
        PostgreSQL server admits nothing else), so only what the bundle adds is measured."""
        doc = yaml.safe_load(secure_config.read_text())
        doc["global"].pop("tls")
        doc["global"].pop("authorization")
        dynamic = Path(doc["dynamicConfigClient"]["filepath"])
        plain_dynamic = yaml.safe_load(dynamic.read_text())
        plain_dynamic.pop("system.enableRingpopTLS")  # there is no internode TLS to run it over
        doc["dynamicConfigClient"]["filepath"] = str(dynamic.with_name("dynamic_config-plaintext.yaml"))
        Path(doc["dynamicConfigClient"]["filepath"]).write_text(yaml.safe_dump(plain_dynamic))
        path = secure_config.with_name("temporal-plaintext.yaml")
        path.write_text(yaml.safe_dump(doc))
        return path

    def cli_base(self, role: str | None = "system", cert_role: str | None = None) -> list[str]:
        argv = [temporal_cli(), "--address", self.address]
        if self.secure:
            argv += ["--tls-ca-path", str(self.bundle / "trust/ca.pem"), "--tls-server-name", "localhost"]
            cert_role = cert_role or role or "system"
            argv += ["--tls-cert-path", str(self.bundle / f"clients/{cert_role}.pem"),
                     "--tls-key-path", str(self.bundle / f"clients/{cert_role}.key")]
            if role:
                argv += ["--api-key", self.token(role)]
        return argv

    def token(self, role: str) -> str:
        return (self.bundle / "tokens" / f"{role}.jwt").read_text().strip()

    def history_events(self, namespace: str, workflow_id: str, run_id: str | None = None) -> list[dict]:
        """The workflow's history events as `temporal workflow show --output json` prints them, read
        with the system role and no codec: payloads as the server stores them."""
        argv = [*self.cli_base("system"), "workflow", "show", "--namespace", namespace, "--workflow-id", workflow_id,
                "--output", "json", *(["--run-id", run_id] if run_id else [])]
        shown = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0, shown.stderr
        return json.loads(shown.stdout)["events"]

    def healthy(self) -> bool:
        if any(p.poll() is not None for p in self.processes):
            raise HarnessError(f"a cluster process exited; log tail:\n{self.log_tail()}")
        result = subprocess.run([*self.cli_base(None), "operator", "cluster", "health"], capture_output=True, text=True)
        return result.returncode == 0 and "SERVING" in result.stdout

    def register_namespaces(self, timeout: float = 60) -> str:
        return run_cli(
            "register-namespaces", "--config", str(self.config_path), "--out", str(self.bundle),
            "--address", self.address, "--timeout", str(timeout),
        ).stdout

    def start_registered(self) -> "LocalCluster":
        """Start, register the namespaces, and on any failure print the log tail and clean up."""
        try:
            self.start()
            self.register_namespaces()
        except Exception:
            print(self.log_tail())
            self.stop()
            raise
        return self

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError, AttributeError):
            return "\n".join(self.server_log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        self.stop_server()
        if self.postgres:
            self.postgres.stop()
            shutil.rmtree(self.postgres.workdir, ignore_errors=True)

    def stop_server(self) -> None:
        """temporal-server and the JWKS server; PostgreSQL, if any, runs on (a benchmark reads it)."""
        for process in reversed(self.processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        self.processes.clear()
