"""The real Temporal server on a bundle whose CA and JWT signing keys never left a SoftHSM2 token
(issue 17): it accepts the certificates the token's CAs signed and the tokens the token's signing
key signed, refuses what it should (a subset of the authorization matrix), and a signing-key
rotation done in the token is accepted once the server has refetched the JWKS."""

from __future__ import annotations

import json
import os
import time

import jwt
import pytest

from bootstrap.core.hsm import is_reference
from bootstrap.core.tokens import SigningKey
from tests.harness import LocalCluster, run_cli
from tests.hsm.conftest import softhsm_token
from tests.server.conftest import EXTRA_ROLES
from tests.server.test_authorization import Identity, claims_for, identity, run

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def hsm_cluster(tmp_path_factory):
    env, keys = softhsm_token(tmp_path_factory.mktemp("softhsm"), "cluster")
    previous = os.environ.get("SOFTHSM2_CONF")
    os.environ.update(env)  # the CLI subprocesses (init, rotate) inherit it
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster-pkcs11"), extra_roles=EXTRA_ROLES, keys=keys,
                           jwks_refresh="2s")
    try:
        yield cluster.start_registered()
    finally:
        cluster.stop()
        if previous is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = previous


def test_the_cluster_runs_on_token_keys(hsm_cluster):
    private = hsm_cluster.bundle / "private"
    for path in [*private.glob("ca*.key"), *(private / "jwt").glob("*.key")]:
        assert is_reference(path.read_bytes()), f"{path} holds key material"


@pytest.mark.parametrize("role,action,namespace", [
    ("system", "register", "default"),
    ("client", "start", "default"),
    ("client", "start", "other"),
    ("worker", "poll", "default"),
    ("reader", "describe", "default"),
])
def test_allowed(hsm_cluster, role, action, namespace):
    assert run(hsm_cluster, identity(hsm_cluster, role), action, namespace) == "ok"


@pytest.mark.parametrize("role,action,namespace", [
    ("reader", "start", "default"),
    ("scoped", "start", "other"),
    ("client", "register", "default"),
])
def test_denied(hsm_cluster, role, action, namespace):
    assert run(hsm_cluster, identity(hsm_cluster, role), action, namespace) == "denied"


def test_no_token_and_a_forged_token_are_denied(hsm_cluster):
    who = identity(hsm_cluster, "system")
    assert run(hsm_cluster, Identity(who.cert, who.key, None, who.ca), "describe") == "denied"
    kid = (hsm_cluster.bundle / "private/jwt/active").read_text().strip()
    forged = jwt.encode(claims_for(hsm_cluster, ["temporal-system:admin"]), SigningKey.generate().private_key,
                        algorithm="ES256", headers={"kid": kid})
    assert run(hsm_cluster, Identity(who.cert, who.key, forged, who.ca), "describe") == "denied"


def test_no_client_certificate_is_refused(hsm_cluster):
    who = identity(hsm_cluster)
    assert run(hsm_cluster, Identity(None, None, who.token, who.ca), "describe") == "refused"


def test_internode_certificate_is_refused_at_the_frontend(hsm_cluster):
    who = identity(hsm_cluster)
    internode = Identity((hsm_cluster.bundle / "server/internode.pem").read_bytes(),
                         (hsm_cluster.bundle / "server/internode.key").read_bytes(), who.token, who.ca)
    assert run(hsm_cluster, internode, "describe") == "refused"


def test_signing_key_rotation_in_the_token_is_accepted(hsm_cluster):
    """Publish a new token key, let the server refetch the JWKS, activate it with the probe (a
    token signed in the token, checked by the live server), then use the re-minted tokens."""
    cluster = hsm_cluster
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
