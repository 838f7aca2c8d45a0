"""scripts/docker-engine.sh on a host whose engine is already there (Docker Desktop, rootless, a
remote DOCKER_HOST): as a non-root user with only a docker CLI on PATH, no dockerd, no iptables,
it uses that engine and installs nothing."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
USER = "bundle-engine-test"


@pytest.fixture
def plain_user():
    # Not pytest's tmp_path: its parents are 0700 root, which the test user cannot enter.
    tmp_path = Path(tempfile.mkdtemp(prefix="engine-test-"))
    if subprocess.run(["id", USER], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", USER], check=True)
    # The engine's socket is root:docker 0660: membership is how a desktop user reaches it.
    subprocess.run(["usermod", "-aG", "docker", USER], check=True)
    home = Path(pwd.getpwnam(USER).pw_dir)
    plugin = Path.home() / ".docker" / "cli-plugins" / "docker-compose"
    target = home / ".docker" / "cli-plugins" / "docker-compose"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(plugin, target)
    subprocess.run(["chown", "-R", f"{USER}:{USER}", str(home / ".docker")], check=True)
    # Installers that must not run: each one leaves a mark if it is called.
    traps = tmp_path / "traps"
    traps.mkdir()
    for name in ("apt-get", "python3", "sudo"):
        (traps / name).write_text(f"#!/bin/sh\necho {name} >> {traps}/called\nexit 1\n")
        (traps / name).chmod(0o755)
    os.chmod(tmp_path, 0o755)
    repo_copy = tmp_path / "repo"
    shutil.copytree(REPO / "scripts", repo_copy / "scripts")
    subprocess.run(["chown", "-R", f"{USER}:{USER}", str(tmp_path)], check=True)
    yield traps, repo_copy
    shutil.rmtree(tmp_path, ignore_errors=True)


def as_user(traps: Path, *argv: str) -> subprocess.CompletedProcess:
    path = f"{traps}:/usr/local/bin:/usr/bin:/bin"  # no /usr/sbin: no dockerd, no iptables
    return subprocess.run(["runuser", "-u", USER, "--", "env", "-i", f"PATH={path}", f"HOME={pwd.getpwnam(USER).pw_dir}",
                           *argv], capture_output=True, text=True, timeout=120)


def test_uses_a_reachable_engine_as_a_plain_user_without_installing(plain_user):
    traps, repo = plain_user
    missing = as_user(traps, "sh", "-c", "command -v dockerd || command -v iptables || echo none")
    assert missing.stdout.strip() == "none", "the test user must have no dockerd and no iptables"
    assert as_user(traps, "id", "-u").stdout.strip() != "0"
    result = as_user(traps, "bash", str(repo / "scripts/docker-engine.sh"), "start")
    assert result.returncode == 0, result.stderr
    assert "docker engine: up" in result.stdout
    assert not (traps / "called").exists(), (traps / "called").read_text()
    # And the engine really answers this user.
    info = as_user(traps, "docker", "info", "--format", "{{.ServerVersion}}")
    assert info.returncode == 0 and info.stdout.strip()


def test_without_a_reachable_engine_a_plain_user_gets_one_clear_error(plain_user):
    traps, repo = plain_user
    result = as_user(traps, "env", "DOCKER_HOST=unix:///nonexistent.sock", "bash", str(repo / "scripts/docker-engine.sh"), "start")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: no docker engine reachable")
    assert not (traps / "called").exists()
