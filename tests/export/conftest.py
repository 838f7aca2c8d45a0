"""The export tier: a bundle made by a real `init`, exported by the real `export-helm` command
(the helpers are in tests/support/exports.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tests.support.bundles import Bundle, make_bundle
from tests.support.exports import CONFIG, export


@pytest.fixture(scope="session")
def bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("export-bundle"), CONFIG)


@pytest.fixture(scope="session")
def exported(bundle, tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("export") / "out"
    result = export(bundle, dest)
    assert result.code == 0, result.err
    return dest


@pytest.fixture
def own_bundle(bundle, tmp_path):
    """A private copy of the session bundle, for tests that change it."""
    root = tmp_path / "copy"
    shutil.copytree(bundle.config_path.parent, root)
    return Bundle(root / "out", root / "bundle.yaml")


@pytest.fixture
def values(exported) -> dict:
    return yaml.safe_load((exported / "values.yaml").read_text())
