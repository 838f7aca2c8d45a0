"""The wheel the bundle image installs holds every package of bootstrap/: a subpackage left out
(as bootstrap.ops.plan and bootstrap.core.config were, once, after a split) breaks every command
in the image while every test run from the checkout still passes."""

from __future__ import annotations

import glob
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_wheel_holds_every_package_under_bootstrap(tmp_path):
    # From a copy of what scripts/build-images.sh copies: a build in the checkout would reuse
    # setuptools' build/lib, stale files included.
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "bootstrap", source / "bootstrap", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(source)],
                   check=True, capture_output=True)
    (wheel,) = glob.glob(str(tmp_path / "*.whl"))
    shipped = {name.rsplit("/", 1)[0] for name in zipfile.ZipFile(wheel).namelist() if name.endswith("/__init__.py")}
    packages = {str(init.parent.relative_to(REPO)) for init in (REPO / "bootstrap").rglob("__init__.py")}
    assert packages - shipped == set()
