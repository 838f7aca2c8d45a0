"""The Temporal Web UI server outside docker: the cached ui-server build (scripts/build-images.sh
ui-server, v2.58.1, web assets embedded) started as the image starts it (`ui-server --env docker
start`, the module's own config/docker.yaml template read from TEMPORAL_* variables), with the
environment docker-compose.prod.yml gives the temporal-ui service: HTTPS with ui/server.pem, OIDC
login at the given issuer (Dex) with the bundle's client and its secret, and the UI gate as its
upstream over mTLS with ui/client.pem. Only addresses differ. Nothing here skips: a missing binary
or template is an exception."""

from __future__ import annotations

import json
import os
import re
import shutil
import ssl
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.support.paths import REPO
from tests.support.processes import stop_group
from tests.support.waits import HarnessError, wait_until

# Debian's chromium, driven by Playwright (no browser download), headless in a CI sandbox.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

UI_VERSION = "2.58.1"
MODULE = f"github.com/temporalio/ui-server/v2@v{UI_VERSION}"


def _cache() -> Path:
    default = os.environ.get("TEMPORAL_BIN_CACHE", Path.home() / ".cache" / "temporal-bundle")
    return Path(os.environ.get("TEMPORAL_BUNDLE_CACHE", default))


def ui_server_binary() -> Path:
    """The cached ui-server build; builds it (minutes, once) when missing."""
    binary = _cache() / f"ui-server-{UI_VERSION}" / "ui-server"
    if not binary.is_file():
        out = subprocess.run(["bash", str(REPO / "scripts" / "build-images.sh"), "ui-server"],
                             capture_output=True, text=True, check=False)
        if out.returncode != 0 or not binary.is_file():
            raise HarnessError(f"building ui-server {UI_VERSION} failed:\n{out.stderr[-3000:]}")
    return binary


def docker_config_template() -> Path:
    """config/docker.yaml of the ui-server module: what the image (and our stand-in) starts from."""
    modcache = subprocess.run(["go", "env", "GOMODCACHE"], capture_output=True, text=True).stdout.strip()
    template = Path(modcache) / MODULE / "config" / "docker.yaml" if modcache else None
    if template is None or not template.is_file():
        # Its go.mod wants a newer Go than Debian's: the toolchain comes through the module proxy.
        env = {"GOTOOLCHAIN": "go1.27.3", **os.environ}
        out = subprocess.run(["go", "mod", "download", "-json", MODULE], capture_output=True, text=True, env=env)
        try:
            template = Path(json.loads(out.stdout)["Dir"]) / "config" / "docker.yaml"
        except (ValueError, KeyError) as exc:
            raise HarnessError(f"go mod download {MODULE} failed: {out.stdout[-1000:]} {out.stderr[-1000:]}") from exc
    if not template.is_file():
        raise HarnessError(f"{template} missing")
    return template


@dataclass
class UIServer:
    bundle: Path     # the bundle directory `init` wrote (trust/, ui/)
    workdir: Path
    port: int        # network.ui_port of the bundle: Dex's redirect URI names it
    upstream: str    # host:port of the UI gate
    issuer: str      # Dex's issuer URL
    client_id: str
    client_secret: str
    codec_endpoint: str = ""
    public_host: str = "localhost"
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"https://{self.public_host}:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / "ui-server.log"

    def environment(self) -> dict[str, str]:
        """docker-compose.prod.yml's temporal-ui environment, for loopback."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "TEMPORAL_ADDRESS": self.upstream,
            "TEMPORAL_UI_PORT": str(self.port),
            "TEMPORAL_TLS_CA": str(self.bundle / "trust" / "ca.pem"),
            "TEMPORAL_TLS_CERT": str(self.bundle / "ui" / "client.pem"),
            "TEMPORAL_TLS_KEY": str(self.bundle / "ui" / "client.key"),
            "TEMPORAL_TLS_SERVER_NAME": "ui-gate",
            "TEMPORAL_TLS_ENABLE_HOST_VERIFICATION": "true",
            "TEMPORAL_UI_SERVER_TLS_CERT": str(self.bundle / "ui" / "server.pem"),
            "TEMPORAL_UI_SERVER_TLS_KEY": str(self.bundle / "ui" / "server.key"),
            "TEMPORAL_DEFAULT_NAMESPACE": "default",
            "TEMPORAL_CORS_ORIGINS": self.url,
            "TEMPORAL_AUTH_ENABLED": "true",
            "TEMPORAL_AUTH_PROVIDER_URL": self.issuer,
            "TEMPORAL_AUTH_ISSUER_URL": self.issuer,
            "TEMPORAL_AUTH_CLIENT_ID": self.client_id,
            "TEMPORAL_AUTH_CLIENT_SECRET": self.client_secret,
            "TEMPORAL_AUTH_CALLBACK_URL": f"{self.url}/auth/sso/callback",
            "TEMPORAL_AUTH_SCOPES": "openid,profile,email,groups,offline_access",
            "TEMPORAL_AUTH_USE_ID_TOKEN_AS_BEARER": "false",
            "SSL_CERT_FILE": str(self.bundle / "trust" / "ca.pem"),
        }
        if self.codec_endpoint:
            env.update(TEMPORAL_CODEC_ENDPOINT=self.codec_endpoint, TEMPORAL_CODEC_PASS_ACCESS_TOKEN="true")
        return env

    def start(self) -> "UIServer":
        root = self.workdir / "ui-server"
        (root / "config").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(docker_config_template(), root / "config" / "docker.yaml")
        self.process = subprocess.Popen([str(ui_server_binary()), "--root", str(root), "--env", "docker", "start"],
                                        stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
                                        env=self.environment(), start_new_session=True)
        wait_until(self._ready, 30, f"the UI server on {self.port}")
        return self

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise HarnessError(f"ui-server exited: {self.log.read_text(errors='replace')[-3000:]}")
        ctx = ssl.create_default_context(cafile=str(self.bundle / "trust" / "ca.pem"))
        try:
            with urllib.request.urlopen(f"https://localhost:{self.port}/healthz", context=ctx, timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        stop_group(self.process)


def chromium_home(home: Path, ca_pem: bytes) -> Path:
    """A HOME for chromium whose NSS database (what chromium on Linux trusts) holds each CA of
    `ca_pem` and nothing else of ours: certificate errors stay errors."""
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    subprocess.run(["certutil", "-d", f"sql:{nssdb}", "-N", "--empty-password"], check=True, capture_output=True)
    for index, body in enumerate(re.findall(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", ca_pem, re.S)):
        cert = home / f"ca-{index}.pem"
        cert.write_bytes(body + b"\n")
        subprocess.run(["certutil", "-d", f"sql:{nssdb}", "-A", "-t", "C,,", "-n", f"temporal-bundle-ca-{index}",
                        "-i", str(cert)], check=True, capture_output=True)
    return home
