"""A throw-away PostgreSQL server (Debian's packages) with TLS and certificate auth, on loopback,
for the server tier's postgres-driver cluster."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.ports import free_port
from tests.support.waits import HarnessError, wait_until


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
