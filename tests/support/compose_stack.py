"""Drive docker-compose.prod.yml on a real Docker engine, the way an operator does (`make up`),
for the docker test tier and benchmarks/bench_make_up.py.

Nothing here skips: no engine, a failed image build or a stack that never gets healthy raises.
"""

from __future__ import annotations

import base64
import hashlib
import json
import fcntl
import os
import re
import secrets
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from bootstrap.ops.plan import DOMAINS
from bootstrap.store import Layout
from tests.support.paths import REPO
from tests.support.ports import free_port

STANDIN_ENV = REPO / "build" / "standin-images.env"
IMAGE_VARS = ("TEMPORAL_SERVER_IMAGE", "TEMPORAL_ADMINTOOLS_IMAGE", "POSTGRES_IMAGE", "TEMPORAL_UI_IMAGE", "DEX_IMAGE",
              "BUNDLE_IMAGE", "PROMETHEUS_IMAGE", "ALERTMANAGER_IMAGE")
# The compose profile `monitoring`: the shared session stack runs with it (conftest.py).
MONITORING = ("expiry-exporter", "prometheus", "alertmanager")
LONG_RUNNING = ("token-refresher", "jwks", "postgresql", "db-backup", "temporal", "temporal-ui", "codec-server", "dex", *MONITORING)
ONE_SHOT = ("bootstrap", "temporal-schema", "temporal-register-namespaces")
GRAFANA_ABSENT = "tests/docker/compose.grafana-absent.yml"
TIMINGS: dict[str, float] = {}  # seconds per phase of the docker tier, printed at teardown
# keys.backend pkcs11: `make up` adds this file (the token's volume and PIN, Makefile KEYS_BACKEND).
PKCS11_OVERRIDE = "docker-compose.pkcs11.yml"
SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"  # bootstrap.core.hsm.SOFTHSM_MODULE, in the image
HSM_TOKEN_LABEL = "temporal-bundle"
HSM_PIN_PATH = "/run/secrets/hsm-pin"


class StackError(RuntimeError):
    pass


def run(argv, *, env=None, timeout=600, check=True, cwd=REPO, input=None) -> subprocess.CompletedProcess:
    result = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False, input=input
    )
    if check and result.returncode != 0:
        raise StackError(
            f"{' '.join(map(str, argv))} exited {result.returncode}\n"
            f"--- stdout ---\n{result.stdout[-6000:]}\n--- stderr ---\n{result.stderr[-6000:]}"
        )
    return result


def start_engine() -> None:
    """scripts/docker-engine.sh start: the engine must answer, or the caller fails (never skips)."""
    run(["bash", "scripts/docker-engine.sh", "start"], timeout=180)


def build_standin_images(temporal_version: str | None = None) -> dict[str, str]:
    """Every image the compose file names, built locally (stand-ins + our image); VAR -> image.
    temporal_version: stand-ins of another Temporal release than the default (their variables go
    to build/standin-images-<version>.env, see scripts/build-images.sh)."""
    start_engine()
    env = dict(os.environ, **({"TEMPORAL_VERSION": temporal_version} if temporal_version else {}))
    # One build at a time: the docker modules run in two pytest processes (scripts/run-tests.sh),
    # and both builds would write the same wheelhouse.
    STANDIN_ENV.parent.mkdir(parents=True, exist_ok=True)
    with open(STANDIN_ENV.parent / ".build-images.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        run(["bash", "scripts/build-images.sh", "standins"], env=env, timeout=1800)
    env_file = STANDIN_ENV.with_name(f"standin-images-{temporal_version}.env") if temporal_version else STANDIN_ENV
    images = {}
    for line in env_file.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            images[key.strip()] = value.strip()
    missing = [v for v in IMAGE_VARS if v not in images]
    if missing:
        raise StackError(f"{env_file} lacks {missing}")
    return images


def grafana_image() -> str:
    """GRAFANA_IMAGE as compose resolves it: the environment's, else the compose file's pinned default."""
    pinned = re.search(r"\$\{GRAFANA_IMAGE:-([^}]+)\}", (REPO / "docker-compose.prod.yml").read_text())
    return os.environ.get("GRAFANA_IMAGE") or pinned.group(1)


def image_present(image: str) -> bool:
    return run(["docker", "image", "inspect", image], check=False).returncode == 0


def grafana_files() -> tuple[str, ...]:
    """Compose files beyond docker-compose.prod.yml for a stack with the profile monitoring: none when
    the Grafana image is on the engine; else the override that leaves Grafana out (no registry here,
    no Debian package, and its frontend needs a Node build), so the rest of the profile runs."""
    return () if image_present(grafana_image()) else (GRAFANA_ABSENT,)


def readable_by_containers(directory: Path) -> None:
    """A test's files a container mounts, readable by whichever user the container runs as (test
    keys and passwords, never a bundle's)."""
    directory.chmod(0o755)
    for path in directory.iterdir():
        path.chmod(0o644)


def unique_project(prefix: str) -> str:
    return f"{prefix}{os.getpid()}{secrets.token_hex(3)}"


@dataclass
class ComposeStack:
    project: str
    workdir: Path
    images: dict[str, str]
    compose_files: tuple[str, ...] = ("docker-compose.prod.yml",)
    extra_env: dict[str, str] = field(default_factory=dict)
    config_source: Path = REPO / "bundle.example.yaml"
    profiles: tuple[str, ...] = ()  # compose profiles, e.g. ("monitoring",)
    # The example's production default is 512. Tests run 4 where the count does not matter: at 512
    # a loaded 2-core machine was still acquiring shards when `make up` returned (a workflow call
    # right after a restart timed out). benchmarks/bench_make_up.py runs 512.
    history_shards: int | None = 4
    # "pkcs11": the CA and signing keys in the image's SoftHSM2 token (docker-compose.pkcs11.yml).
    keys_backend: str = "file"

    def __post_init__(self):
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = self.workdir / "bundle.yaml"
        # Created by `make up` for the SoftHSM2 token (its directory 0700, the file 0444).
        self.hsm_pin_file = self.workdir / "secrets" / "hsm-pin"
        self.frontend_port = free_port()
        self.ui_port = free_port()
        self.codec_port = free_port()
        self.oidc_port = free_port()
        self.grafana_port = free_port()
        # Browser tests log in as this reader of `default` (and as the generated admin).
        self.reader_password = secrets.token_urlsafe(12)
        if not self.config.exists():
            self.config.write_text(yaml.safe_dump(self._test_config(), sort_keys=False))

    def _test_config(self) -> dict:
        """The example config, with the published ports the browser sees (the UI's callback URL,
        CORS origins and Dex's issuer name them) and a second namespace with a reader of default."""
        import bcrypt

        doc = yaml.safe_load(self.config_source.read_text())
        if self.history_shards:
            doc["persistence"]["num_history_shards"] = self.history_shards
        doc["namespaces"].append({"name": "orders", "retention": "3d"})
        doc.setdefault("network", {})["ui_port"] = self.ui_port
        doc["network"]["grafana_port"] = self.grafana_port
        doc["oidc"] = {
            "port": self.oidc_port,
            # Short, so a test can watch a real Dex token expire; the UI refreshes its session.
            "token_lifetime": "90s",
            "groups": {"admins": ["temporal-system:admin"], "default-readers": ["default:read"]},
            "users": [{"username": "reader", "email": "reader@example.com", "groups": ["default-readers"],
                       "password_hash": bcrypt.hashpw(self.reader_password.encode(), bcrypt.gensalt(10)).decode()}],
        }
        # Prometheus (profile monitoring) scrapes every 5s, so an alert fires within a test's patience.
        doc.setdefault("monitoring", {})["scrape_interval"] = "5s"
        if self.keys_backend == "pkcs11":
            doc["keys"] = {"backend": "pkcs11", "pkcs11": {"module": SOFTHSM_MODULE, "token_label": HSM_TOKEN_LABEL,
                                                           "pin_file": HSM_PIN_PATH}}
        return doc

    @property
    def all_compose_files(self) -> tuple[str, ...]:
        """The files compose reads: `make up`'s choice (the pkcs11 override when bundle.yaml says so)."""
        extra = (PKCS11_OVERRIDE,) if self.keys_backend == "pkcs11" and PKCS11_OVERRIDE not in self.compose_files else ()
        return (*self.compose_files, *extra)

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "TEMPORAL_", "BUNDLE_"))}
        env.update(self.images)
        env.update(
            COMPOSE_PROJECT_NAME=self.project,
            COMPOSE_FILE=os.pathsep.join(self.all_compose_files),
            BUNDLE_CONFIG_FILE=str(self.config),
            HSM_PIN_FILE=str(self.hsm_pin_file),
            TEMPORAL_FRONTEND_PORT=str(self.frontend_port),
            CODEC_PORT=str(self.codec_port),
            # The UI's and Dex's ports come from bundle.yaml, through the env file `make up`
            # renders (the Makefile's COMPOSE_ENV_FILES); direct compose calls read it too.
            IMAGES_ENV="",
            UP_TIMEOUT="300",
            HEALTHCHECK_INTERVAL="2s",  # operators run with 5s; a faster `make up` for the tests
            COMPOSE_PROFILES=",".join(self.profiles),
        )
        if self.env_file.exists():
            env["COMPOSE_ENV_FILES"] = str(self.env_file)
        env.update(self.extra_env)
        return env

    @property
    def env_file(self) -> Path:
        """What `make up` rendered from bundle.yaml for this project (Makefile BUNDLE_ENV_FILE)."""
        return REPO / "build" / f"{self.project}.env"

    # ------------------------------------------------------------------ operator commands
    def make(self, *targets: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
        # One file: the Makefile adds the pkcs11 override itself (what operators get). More files:
        # COMPOSE names them all, so the override is named here too.
        compose_file = self.compose_files[0] if len(self.compose_files) == 1 else None
        extra = [f"COMPOSE_FILE_PATH={compose_file}"] if compose_file else [
            "COMPOSE=docker compose " + " ".join(f"-f {f}" for f in self.all_compose_files)
        ]
        return run(["make", "--no-print-directory", *extra, *targets], env=self.env, timeout=timeout, check=check)

    def compose(self, *args: str, timeout: float = 600, check: bool = True, input=None) -> subprocess.CompletedProcess:
        argv = ["docker", "compose"]
        for f in self.all_compose_files:
            argv += ["-f", f]
        return run([*argv, *args], env=self.env, timeout=timeout, check=check, input=input)

    def up(self) -> float:
        """`make up`; seconds until it returned (everything healthy, namespaces registered)."""
        started = time.monotonic()
        result = self.make("up", check=False)
        elapsed = time.monotonic() - started
        if result.returncode != 0:
            raise StackError(f"make up failed after {elapsed:.0f}s\n{result.stdout[-8000:]}\n{result.stderr[-8000:]}")
        self.last_up_output = result.stdout
        return elapsed

    def down(self, volumes: bool = False) -> None:
        self.compose("down", "--remove-orphans", *(["--volumes"] if volumes else []), timeout=300)

    def logs(self, *services: str) -> str:
        return self.compose("logs", "--no-color", "--timestamps", *services, check=False, timeout=120).stdout

    def teardown(self, log_name: str = "compose.log") -> Path:
        """Dump every log to workdir/log_name, then remove containers, networks and volumes."""
        path = self.workdir / log_name
        try:
            ps = self.compose("ps", "--all", check=False).stdout
            path.write_text(ps + "\n" + self.logs())
        finally:
            self.compose("down", "--volumes", "--remove-orphans", check=False, timeout=300)
            self.env_file.unlink(missing_ok=True)
        return path

    # ------------------------------------------------------------------ inspection
    def containers(self) -> list[dict]:
        out = self.compose("ps", "--all", "--format", "json").stdout.strip()
        if not out:
            return []
        if out.startswith("["):
            return json.loads(out)
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def container_id(self, service: str) -> str:
        ids = self.compose("ps", "--all", "--quiet", service).stdout.split()
        if not ids:
            raise StackError(f"no container for service {service}")
        return ids[0]

    def inspect(self, service: str) -> dict:
        return json.loads(run(["docker", "inspect", self.container_id(service)]).stdout)[0]

    def volume(self, name: str) -> str:
        return f"{self.project}_{name}"

    def network(self, name: str) -> str:
        return f"{self.project}_{name}"

    def read_bundle_file(self, relative: str) -> bytes:
        """A file from the bundle volumes, read through a fresh bootstrap container."""
        result = subprocess.run(
            ["docker", "compose", *sum((["-f", f] for f in self.all_compose_files), []), "run", "--rm", "--no-deps",
             "--entrypoint", "cat", "bootstrap", f"/bundle/{relative}"],
            cwd=REPO, env=self.env, capture_output=True, timeout=120,
        )
        if result.returncode != 0:
            raise StackError(f"cannot read {relative}: {result.stderr.decode(errors='replace')}")
        return result.stdout

    def read_bundle_files(self, *relative: str) -> dict[str, bytes]:
        """Several files from the bundle volumes (private/ included), through one bootstrap container."""
        script = (
            "import base64, json, sys\n"
            "print(json.dumps({p: base64.b64encode(open('/bundle/' + p, 'rb').read()).decode() for p in sys.argv[1:]}))"
        )
        result = subprocess.run(
            ["docker", "compose", *sum((["-f", f] for f in self.all_compose_files), []), "run", "--rm", "--no-deps",
             "--entrypoint", "python3", "bootstrap", "-c", script, *relative],
            cwd=REPO, env=self.env, capture_output=True, text=True, timeout=120,
        )
        if result.returncode != 0:
            raise StackError(f"cannot read {relative}: {result.stderr}")
        lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
        return {k: base64.b64decode(v) for k, v in json.loads(lines[-1]).items()}

    def bundle_digests(self) -> dict[str, str]:
        """sha256 of every file under /bundle (all bundle volumes), as the bootstrap sees them."""
        out = self.compose(
            "run", "--rm", "--no-deps", "--entrypoint", "sh", "bootstrap", "-c",
            "cd /bundle && find . -type f ! -name '.*.tmp' -exec sha256sum {} + | sort -k2",
        ).stdout
        return {line.split()[1]: line.split()[0] for line in out.splitlines() if line.strip()}

    def run_client(self, *args: str, network: str = "edge", timeout: float = 180, volumes: tuple[str, ...] = (),
                   user: str | None = None, module: str = "tests.support.e2e_client") -> dict:
        """tests/support/e2e_client.py (as a module of the tests package) in the bundle image on the compose network, with the client
        volumes read-only (and `volumes`, more bundle directories, e.g. "dbclient"); its JSON result (raises if it
        printed none). `user` for reading another service's 0600 key (e.g. "1000:1000" for dbclient/)."""
        argv = [
            "docker", "run", "--rm", "--network", self.network(network), "--read-only", "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges:true", *(["--user", user] if user else []),
            "-v", f"{self.volume('bundle-trust')}:/bundle/trust:ro",
            "-v", f"{self.volume('bundle-clients')}:/bundle/clients:ro",
            "-v", f"{self.volume('bundle-tokens')}:/bundle/tokens:ro",
            *sum((["-v", f"{self.volume('bundle-' + d)}:/bundle/{d}:ro"] for d in volumes), []),
            "-e", f"E2E_UI_ORIGIN=https://localhost:{self.ui_port}",
            # The whole tests package, so the client runs the server tier's own workflow.
            "-v", f"{REPO / 'tests'}:/opt/e2e/tests:ro", "--workdir", "/opt/e2e",
            self.images["BUNDLE_IMAGE"], "python3", "-m", module, *args,
        ]
        result = run(argv, timeout=timeout, check=False)
        lines = [l for l in result.stdout.splitlines() if l.startswith("{")]
        if not lines:
            raise StackError(f"{module} {' '.join(args)} printed no result (exit {result.returncode})\n"
                             f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
        out = json.loads(lines[-1])
        out["exit_code"] = result.returncode
        return out


def ca_fingerprint(stack: ComposeStack) -> dict[str, str]:
    """SHA-256 of every trust domain's CA certificate (server, client, internode, database)."""
    files = stack.read_bundle_files(*(str(Layout(Path(".")).domain_ca(d)[0]) for d in DOMAINS))
    return {path: hashlib.sha256(x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)).hexdigest()
            for path, pem in files.items()}
