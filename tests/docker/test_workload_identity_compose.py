"""The token exchange as compose runs it (`--profile workload-identity`), with a local issuer in the
role of the cluster: tests/support/kube_issuer.py (a STAND-IN for kube-apiserver, see there) as a container
on the edge network. Only bootstrap, the exchange and the issuer start: what the exchanged token
is worth at the real Temporal server is tests/server/test_workload_identity.py's subject."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from bootstrap.core.tokens import verify_token
from bootstrap.core.workload_identity import GRANT_TYPE, JWT_TOKEN_TYPE
from tests.support.kube_issuer import AUDIENCE, KubeIssuer

from tests.support.compose_stack import ComposeStack, build_standin_images, readable_by_containers, unique_project
from tests.support.paths import REPO
from tests.support.ports import free_port

pytestmark = [pytest.mark.own_stack, pytest.mark.docker, pytest.mark.timeout(900)]

ISSUER_HOST, ISSUER_PORT = "kube-issuer", 6443
ISSUER_DIR_IN_CONTAINER = "/etc/temporal-bundle/workload-issuer"


class WorkloadStack(ComposeStack):
    def _test_config(self) -> dict:
        doc = super()._test_config()
        doc["workload_identity"] = {"issuers": [{
            "name": "cluster", "issuer": f"https://{ISSUER_HOST}:{ISSUER_PORT}", "audience": AUDIENCE,
            "ca_file": f"{ISSUER_DIR_IN_CONTAINER}/issuer-ca.pem",
            "auth_token_file": f"{ISSUER_DIR_IN_CONTAINER}/discovery.token"}]}
        return doc


def _override(path: Path, issuer_dir: Path) -> Path:
    path.write_text(yaml.safe_dump({"services": {"kube-issuer": {
        "image": "${BUNDLE_IMAGE}", "user": "10001:10001", "read_only": True, "cap_drop": ["ALL"],
        "profiles": ["workload-identity"], "entrypoint": ["python3", "-m", "tests.support.kube_issuer"],
        "command": ["/issuer", str(ISSUER_PORT), ISSUER_HOST], "working_dir": "/opt/e2e",
        "networks": {"edge": {"aliases": [ISSUER_HOST]}},
        "volumes": [f"{REPO / 'tests'}:/opt/e2e/tests:ro", f"{issuer_dir}:/issuer:ro"],
    }}}))
    return path


@pytest.fixture(scope="module")
def wi_stack(tmp_path_factory):
    images = build_standin_images()
    workdir = tmp_path_factory.mktemp("wi-compose")
    issuer_dir = workdir / "issuer"
    issuer = KubeIssuer(issuer_dir, ISSUER_PORT, host=ISSUER_HOST).write_files()
    readable_by_containers(issuer_dir)  # the containers run as 10001
    exchange_port = free_port()
    stack = WorkloadStack(unique_project("tbwi"), workdir, images,
                          compose_files=("docker-compose.prod.yml", str(_override(workdir / "issuer.yml", issuer_dir))),
                          extra_env={"WORKLOAD_ISSUER_DIR": str(issuer_dir), "EXCHANGE_PORT": str(exchange_port),
                                     "COMPOSE_PROFILES": "workload-identity"})
    try:
        stack.compose("up", "-d", "--wait", "--wait-timeout", "240",
                      "token-exchange", "kube-issuer", timeout=400)
        yield stack, issuer, exchange_port
    finally:
        log = stack.teardown("wi-compose.log")
        print("\n".join(log.read_text().splitlines()[-60:]))


def _exchange(port: int, ca: bytes, subject: str) -> tuple[int, dict]:
    form = urllib.parse.urlencode({"grant_type": GRANT_TYPE, "subject_token": subject,
                                   "subject_token_type": JWT_TOKEN_TYPE}).encode()
    request = urllib.request.Request(f"https://localhost:{port}/token", data=form,
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    context = ssl.create_default_context(cadata=ca.decode())
    try:
        with urllib.request.urlopen(request, context=context, timeout=20) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_compose_exchange_trades_a_service_account_token(wi_stack):
    stack, issuer, port = wi_stack
    files = stack.read_bundle_files("trust/ca.pem", "jwks/jwks.json")
    status, doc = _exchange(port, files["trust/ca.pem"], issuer.service_account_token(namespace="default"))
    assert status == 200, doc
    claims = verify_token(doc["access_token"], json.loads(files["jwks/jwks.json"]), audience="temporal")
    assert claims["groups"] == ["default:write"]
    status, doc = _exchange(port, files["trust/ca.pem"], issuer.service_account_token(audience="kubernetes"))
    assert (status, doc["error"]) == (400, "invalid_request")
    assert "access_token" not in doc


def test_compose_exchange_is_hardened_and_mounts_only_its_own_key(wi_stack):
    stack, _, _ = wi_stack
    info = stack.inspect("token-exchange")
    assert info["HostConfig"]["ReadonlyRootfs"] is True
    assert info["Config"]["User"] == "10001:10001"
    assert info["HostConfig"]["CapDrop"] == ["ALL"]
    volumes = {m["Name"].removeprefix(stack.project + "_"): m["RW"] for m in info["Mounts"] if m["Type"] == "volume"}
    assert volumes == {"bundle-exchange": False, "bundle-trust": False}
    published = {k: v for k, v in info["NetworkSettings"]["Ports"].items() if v}
    assert all(b["HostIp"] == "127.0.0.1" for bindings in published.values() for b in bindings)
    audit = [json.loads(line[line.index("{"):]) for line in stack.logs("token-exchange").splitlines()
             if '"service":"token-exchange"' in line]
    assert audit and all("subject_token" not in json.dumps(a) and "access_token" not in json.dumps(a) for a in audit)
