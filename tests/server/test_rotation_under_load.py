"""A steady load of workflow starts, polls and fresh connections runs while the leaf certs, the
JWT signing key and the CA are rotated on the real server. Zero calls may fail."""

from __future__ import annotations

import asyncio
import sys

import pytest

from bootstrap.core import pki
from tests.support.cluster import LocalCluster
from tests.support.hsm import softhsm_token
from tests.support.load import under_load


@pytest.fixture(scope="module", params=["file", "pkcs11"])
def fast_cluster(request, tmp_path_factory):
    """With keys.backend pkcs11 the CA and signing keys live in a SoftHSM2 token: every
    certificate and token the rotations issue is signed there."""
    with pytest.MonkeyPatch.context() as patch:
        keys = None
        if request.param == "pkcs11":
            env, keys = softhsm_token(tmp_path_factory.mktemp("softhsm"), "rotation")
            for name, value in env.items():  # init, rotate and the token refresher run as subprocesses
                patch.setenv(name, value)
        # Short intervals so a whole rollover fits in a test: JWKS refetch and TLS reload every 2s,
        # tokens live 30s (re-minted at 20s by the refresher, several times per test; at 15s a
        # refresher starved for 5s on a loaded CI machine let tokens expire, which is not what
        # this test is about).
        cluster = LocalCluster(tmp_path_factory.mktemp("rotation"), namespaces=("default",), token_lifetime="30s",
                               jwks_refresh="2s", keys=keys)
        try:
            yield cluster.start_registered()
        finally:
            cluster.stop()


async def rotate(cluster: LocalCluster, *extra: str) -> str:
    """The rotation's output, headed by when it ran (to line up with a failed call's time)."""
    started = pki.utcnow()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bootstrap", "rotate", "--config", str(cluster.config_path), "--out", str(cluster.bundle),
        "--wait", "--probe-address", cluster.address, "--server-name", "localhost", *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 180)
    assert process.returncode == 0, err.decode()
    return f"rotate {' '.join(extra)} {started:%H:%M:%S.%f}-{pki.utcnow():%H:%M:%S.%f}\n{out.decode()}"


def fingerprints(cluster, rel):
    return [pki.fingerprint(c) for c in pki.load_certs((cluster.bundle / rel).read_bytes(), rel)]


def test_rotations_under_load_fail_no_call(fast_cluster):
    cluster = fast_cluster
    before = {"ca": fingerprints(cluster, "private/ca.pem"), "frontend": fingerprints(cluster, "server/frontend.pem"),
              "kid": (cluster.bundle / "private/jwt/active").read_text()}

    async def rotations():
        logs = [await rotate(cluster, "--kind", "certs", "--all")]
        await asyncio.sleep(5)  # the server re-reads the files every 2s
        logs.append(await rotate(cluster, "--kind", "signing-key"))
        logs.append(await rotate(cluster, "--kind", "ca"))
        logs.append(await rotate(cluster, "--kind", "codec-key"))
        return logs

    load, results, logs = asyncio.run(under_load(cluster, rotations))
    assert load.refresher_exit is None, load.refresher_output
    assert not load.start_failures, (load.start_failures[:5], logs)
    assert not load.fresh_failures, (load.fresh_failures[:5], logs)
    assert len(results) > 100 and all(r == "hello, load" for r in results)
    assert load.fresh_ok > 50
    # The rotations really happened.
    assert fingerprints(cluster, "private/ca.pem") != before["ca"]
    assert fingerprints(cluster, "server/frontend.pem") != before["frontend"]
    assert (cluster.bundle / "private/jwt/active").read_text() != before["kid"]
    assert "retired" in logs[1] and "old CA dropped" in logs[2]
