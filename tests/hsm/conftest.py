"""Fixtures of the pkcs11 tier: a fresh SoftHSM2 token per test (tests/support/hsm.py) and a bundle
initialised on it."""

from __future__ import annotations

import os

import pytest

from tests.support.hsm import Token, softhsm_module, softhsm_token
from tests.support.paths import REPO


@pytest.fixture
def token(tmp_path) -> Token:
    env, _ = softhsm_token(tmp_path / "softhsm", "bundle")
    env = {**os.environ, **env, "PYTHONPATH": str(REPO)}
    tok = Token(tmp_path / "softhsm", softhsm_module(), env=env)
    tok.pin_file.chmod(0o600)
    return tok


@pytest.fixture
def hsm_bundle(token, tmp_path):
    config, out = tmp_path / "bundle.yaml", tmp_path / "out"
    config.write_text(token.config())
    result = token.cli("init", "--config", config, "--out", out, "-q")
    assert result.returncode == 0, result.stderr
    return config, out
