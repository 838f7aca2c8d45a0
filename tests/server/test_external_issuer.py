"""oidc.external against the real server: Web UI users of a company IdP (a stand-in HTTPS issuer
with a private CA, tests/support/oidc_issuer.py) get exactly the permissions their groups claim says, and
tokens from any other issuer, for another audience or with the permissions under another claim
are refused. The bundle's own role tokens keep working next to them. The codec server, started as
compose starts it (--jwks-url, --issuer), checks the same tokens."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
import yaml

from bootstrap.core.tokens import SigningKey
from tests.support.cluster import LocalCluster
from tests.support.ports import free_port
from tests.support.binaries import temporal_cli
from tests.support.waits import wait_until
from tests.support.oidc_issuer import CompanyIssuer

CLIENT_ID = "temporal-ui-0c7f"
# Not "groups": proves permissionsClaimName follows oidc.external.groups_claim (role tokens too).
CLAIM = "temporal-roles"


@pytest.fixture(scope="module")
def issuer(tmp_path_factory):
    company = CompanyIssuer(tmp_path_factory.mktemp("company-idp"), free_port()).start()
    yield company
    company.stop()


@pytest.fixture(scope="module")
def cluster(issuer, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("cluster-external-oidc")
    secret = workdir / "ui-client-secret"
    secret.write_text("company-idp-client-secret\n")
    oidc = {"enabled": False, "external": {
        "issuer": issuer.issuer, "jwks_uri": issuer.jwks_uri, "client_id": CLIENT_ID,
        "client_secret_file": str(secret), "ca_file": str(issuer.ca_file), "groups_claim": CLAIM}}
    local = LocalCluster(workdir, oidc=oidc).start_registered()
    yield local
    local.stop()


def call(cluster, token: str, namespace: str = "default") -> subprocess.CompletedProcess:
    """A read call (ListWorkflowExecutions) with a client-domain certificate and the token."""
    argv = [temporal_cli(), "workflow", "list", "--namespace", namespace, "--limit", "1", "--address", cluster.address,
            "--tls-ca-path", str(cluster.bundle / "trust/ca.pem"), "--tls-server-name", "localhost",
            "--tls-cert-path", str(cluster.bundle / "clients/client.pem"),
            "--tls-key-path", str(cluster.bundle / "clients/client.key"), "--api-key", token, "--command-timeout", "10s"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def refused(result: subprocess.CompletedProcess) -> bool:
    text = result.stdout + result.stderr
    return result.returncode != 0 and ("Request unauthorized" in text or "PermissionDenied" in text)


def test_the_server_config_names_the_issuers_keys_claim_and_client_id(cluster, issuer):
    authorization = yaml.safe_load((cluster.bundle / "config/temporal.yaml").read_text())["global"]["authorization"]
    assert authorization["jwtKeyProvider"]["keySourceURIs"] == [f"https://localhost:{cluster.jwks_port}/jwks.json", issuer.jwks_uri]
    assert (authorization["permissionsClaimName"], authorization["audience"]) == (CLAIM, CLIENT_ID)
    assert issuer.requests.count("/openid/v1/jwks") >= 1, "the server never fetched the issuer's keys"


def test_a_user_of_the_external_issuer_gets_what_the_groups_claim_grants(cluster, issuer):
    reader = issuer.user_token(["default:read"], audience=CLIENT_ID, claim=CLAIM)
    allowed = call(cluster, reader, "default")
    assert allowed.returncode == 0, allowed.stderr
    assert refused(call(cluster, reader, "other")), "a reader of default must not read other"
    admin = issuer.user_token(["temporal-system:admin"], audience=CLIENT_ID, claim=CLAIM, subject="root")
    assert call(cluster, admin, "other").returncode == 0


@pytest.mark.parametrize("case", ["foreign issuer", "foreign key, our issuer's iss", "other audience",
                                  "permissions under another claim", "expired"])
def test_tokens_the_server_must_refuse(cluster, issuer, tmp_path, case):
    groups = ["temporal-system:admin"]
    if case == "foreign issuer":
        foreign = CompanyIssuer(tmp_path / "foreign", free_port()).write_files()
        token = foreign.user_token(groups, audience=CLIENT_ID, claim=CLAIM)
    elif case == "foreign key, our issuer's iss":
        token = issuer.user_token(groups, audience=CLIENT_ID, claim=CLAIM, key=SigningKey.generate("RS256"))
    elif case == "other audience":
        token = issuer.user_token(groups, audience="some-other-app", claim=CLAIM)
    elif case == "permissions under another claim":
        token = issuer.user_token(groups, audience=CLIENT_ID, claim="groups")
    else:
        token = issuer.user_token(groups, audience=CLIENT_ID, claim=CLAIM, lifetime=-60)
    result = call(cluster, token, "default")
    assert refused(result), (case, result.returncode, result.stdout, result.stderr)


def test_the_bundles_role_tokens_still_work(cluster):
    result = call(cluster, cluster.token("client"), "default")
    assert result.returncode == 0, result.stderr
    assert refused(call(cluster, cluster.token("client") + "x", "default"))


# --------------------------------------------------------------------------- codec server


@pytest.fixture(scope="module")
def codec(cluster, issuer):
    port = free_port()
    argv = [sys.executable, "-m", "bootstrap", "serve-codec", "--config", str(cluster.config_path), "--out", str(cluster.bundle),
            "--host", "127.0.0.1", "--port", str(port), "--quiet-audit",
            "--jwks-url", f"https://localhost:{cluster.jwks_port}/jwks.json", "--jwks-url", issuer.jwks_uri,
            "--issuer", issuer.issuer]
    log = open(cluster.workdir / "codec-external.log", "ab")
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ), start_new_session=True)
    url = f"https://localhost:{port}"
    try:
        wait_until(lambda: _post(cluster, url + "/healthz", None, method="GET")[0] == 200, 30, "codec server")
        yield url
    finally:
        process.terminate()
        process.wait(10)


def _post(cluster, url, token, method="POST"):
    ctx = ssl.create_default_context(cafile=str(cluster.bundle / "trust" / "ca.pem"))
    headers = {"Content-Type": "application/json", "X-Namespace": "default"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = b'{"payloads": []}' if method == "POST" else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, method=method, headers=headers),
                                    context=ctx, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def test_the_codec_server_checks_the_external_issuers_tokens(cluster, issuer, codec, tmp_path):
    # Fetching the issuer's keys needs its private CA: the codec loads trust/oidc-issuer/ca.pem.
    assert _post(cluster, codec + "/decode", issuer.user_token(["default:read"], audience=CLIENT_ID, claim=CLAIM))[0] == 200
    assert _post(cluster, codec + "/decode", cluster.token("client"))[0] == 200
    # Known key, no role on default under the configured claim: 403. Foreign or wrong: 401.
    assert _post(cluster, codec + "/decode", issuer.user_token(["other:admin"], audience=CLIENT_ID, claim=CLAIM))[0] == 403
    assert _post(cluster, codec + "/decode", issuer.user_token(["default:admin"], audience=CLIENT_ID, claim="groups"))[0] == 403
    foreign = CompanyIssuer(tmp_path / "foreign", free_port()).write_files()
    assert _post(cluster, codec + "/decode", foreign.user_token(["default:admin"], audience=CLIENT_ID, claim=CLAIM))[0] == 401
    assert _post(cluster, codec + "/decode", issuer.user_token(["default:admin"], audience="other-app", claim=CLAIM))[0] == 401
    wrong_iss = issuer.user_token(["default:admin"], audience=CLIENT_ID, claim=CLAIM, issuer="https://evil.example.com")
    assert _post(cluster, codec + "/decode", wrong_iss)[0] == 401
