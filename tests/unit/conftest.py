"""Shared fixtures for the unit tier: a small config, an in-process CLI runner, session-scoped
bundles made by a real `init` (ECDSA default and RSA), and a byte/mode/mtime snapshot of a tree
(the helpers behind them are in tests/support/bundles.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bootstrap.cli import main
from bootstrap.core.pki import CA
from tests.support.bundles import EXPECTED_LEAVES, RSA_CONFIG, SMALL_CONFIG, Bundle, Run, make_bundle, plant, snapshot


@pytest.fixture
def cli(capsys):
    """Run main([...]) in-process; returns Run(code, out, err)."""

    def run(*args) -> Run:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run


@pytest.fixture
def write_config(tmp_path):
    def write(text: str = SMALL_CONFIG, name: str = "bundle.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


@pytest.fixture
def config_file(write_config) -> Path:
    return write_config()


@pytest.fixture
def fresh_bundle(tmp_path) -> Bundle:
    """A bundle made by `init` for this test alone (tests that modify it)."""
    return make_bundle(tmp_path / "fresh")


@pytest.fixture(scope="session")
def ec_bundle(tmp_path_factory) -> Bundle:
    """A read-only bundle with the defaults (ECDSA P-256, ES256), shared by the whole session."""
    return make_bundle(tmp_path_factory.mktemp("ec-bundle"), cached=True)


@pytest.fixture(scope="session")
def rsa_bundle(tmp_path_factory) -> Bundle:
    """A read-only bundle with pki.key_algorithm rsa-3072 and jwt.algorithm RS256."""
    return make_bundle(tmp_path_factory.mktemp("rsa-bundle"), RSA_CONFIG, cached=True)


@pytest.fixture(scope="session")
def foreign_ca() -> CA:
    return CA.create("Some Other CA", organization="Elsewhere")


# Plain helpers as fixtures, so test modules never import conftest by name.


@pytest.fixture
def snap():
    return snapshot


@pytest.fixture
def plant_file():
    return plant


@pytest.fixture
def bundle_maker(tmp_path):
    counter = iter(range(1000))

    def make(config_text: str = SMALL_CONFIG) -> Bundle:
        return make_bundle(tmp_path / f"bundle-{next(counter)}", config_text)

    return make


@pytest.fixture
def small_config_text() -> str:
    return SMALL_CONFIG


@pytest.fixture(scope="session")
def expected_leaves() -> dict:
    return dict(EXPECTED_LEAVES)
