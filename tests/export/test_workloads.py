"""Each workload we ship, run from nothing but what its manifest mounts: the exported Secret items
and the bundle.yaml ConfigMap laid out at the manifest's mount paths under a temporary root.
Proves every Secret holds what its consumer reads, at the paths the consumer reads it from."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from bootstrap.core.tokens import verify_token
from tests.support.exports import materialize
from tests.support.paths import REPO
from tests.support.ports import free_port


def _manifest(exported: Path, name: str, kind: str) -> dict:
    docs = yaml.safe_load_all((exported / "manifests" / name).read_text())
    return next(d for d in docs if d and d["kind"] == kind)


def _spawn(args, env, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bootstrap", *args], cwd=REPO, env={**os.environ, **env},
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)


def _healthy(url: str, ca: Path, proc: subprocess.Popen, log: Path) -> None:
    context = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            with urllib.request.urlopen(url, context=context, timeout=2) as response:
                assert response.status == 200
                return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"{url} never became healthy:\n{log.read_text()}")


@pytest.fixture
def running(tmp_path):
    procs = []
    yield procs
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


def test_jwks_and_codec_servers_start_from_their_secrets(exported, bundle, tmp_path, running):
    jwks_port, codec_port = free_port(), free_port()
    args, env = materialize(exported, _manifest(exported, "jwks.yaml", "Deployment"), tmp_path / "jwks")
    args = [a if a != str(bundle.config.network.jwks_port) else str(jwks_port) for a in args]
    running.append(_spawn(args, env, tmp_path / "jwks.log"))
    _healthy(f"https://localhost:{jwks_port}/healthz", bundle.ca_file, running[-1], tmp_path / "jwks.log")

    args, env = materialize(exported, _manifest(exported, "codec-server.yaml", "Deployment"), tmp_path / "codec")
    args = [a.replace(bundle.config.jwks_url, f"https://localhost:{jwks_port}/jwks.json") for a in args]
    args = [a if a != str(bundle.config.codec.port) else str(codec_port) for a in args]
    running.append(_spawn(args, env, tmp_path / "codec.log"))
    _healthy(f"https://localhost:{codec_port}/healthz", bundle.ca_file, running[-1], tmp_path / "codec.log")


def test_the_refresher_mints_every_role_token_from_its_secret_alone(exported, bundle, tmp_path):
    args, env = materialize(exported, _manifest(exported, "token-refresher.yaml", "Deployment"), tmp_path)
    assert args[:3] == ["mint-tokens", "--watch", "60"]
    result = subprocess.run([sys.executable, "-m", "bootstrap", "mint-tokens"], cwd=REPO, env={**os.environ, **env},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    jwks = json.loads(bundle.layout.jwks.read_text())
    for role in bundle.config.roles:
        token = (Path(env["BUNDLE_DIR"]) / "tokens" / f"{role.name}.jwt").read_text().strip()
        claims = verify_token(token, jwks, audience=bundle.config.jwt.audience)
        assert sorted(claims["permissions"]) == sorted(role.permissions)
