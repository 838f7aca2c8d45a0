"""The real Temporal server on a bundle whose CA and JWT signing keys never left a SoftHSM2 token:
the key files are references only, and a signing-key rotation done in the token is
accepted once the server has refetched the JWKS. The whole authorization matrix runs on this
cluster too (tests/server/test_authorization.py, the pkcs11-keys cases)."""

from __future__ import annotations

import json
import time

import jwt
import pytest

from bootstrap.core.hsm import is_reference
from tests.support.authorization import identity, run
from tests.support.binaries import run_cli

pytestmark = pytest.mark.timeout(900)


def test_the_cluster_runs_on_token_keys(pkcs11_cluster):
    private = pkcs11_cluster.bundle / "private"
    keys = [*private.glob("ca*.key"), *(private / "jwt").glob("*.key")]
    assert keys
    for path in keys:
        assert is_reference(path.read_bytes()), f"{path} holds key material"


def test_signing_key_rotation_in_the_token_is_accepted(on_token):
    """Publish a new token key, let the server refetch the JWKS, activate it with the probe (a
    token signed in the token, checked by the live server), then use the re-minted tokens."""
    cluster = on_token
    old_kid = (cluster.bundle / "private/jwt/active").read_text().strip()
    base = ["rotate", "--config", str(cluster.config_path), "--out", str(cluster.bundle), "--kind", "signing-key"]
    published = run_cli(*base)
    assert "phase published" in published.stdout or "published" in published.stdout, published.stdout
    new = {p.stem for p in (cluster.bundle / "private/jwt").glob("*.key")} - {old_kid}
    assert len(new) == 1 and json.loads((cluster.bundle / "jwks/jwks.json").read_text())["keys"][1:]
    time.sleep(5)  # > jwt.refresh_interval (2s): the server has refetched the JWKS
    activated = run_cli(*base, "--probe-address", cluster.address, "--server-name", "localhost")
    assert (cluster.bundle / "private/jwt/active").read_text().strip() in new, activated.stdout
    token = cluster.token("client")
    assert jwt.get_unverified_header(token)["kid"] in new
    assert run(cluster, identity(cluster, "client"), "start", "default") == "ok"
    assert run(cluster, identity(cluster, "reader"), "start", "default") == "denied"
