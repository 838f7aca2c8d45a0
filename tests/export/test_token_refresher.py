"""The in-cluster token refresher: `mint-tokens --kubernetes-secrets PREFIX` patches each re-minted
token into the Secrets export-helm made, through an API server that speaks TLS and wants the pod's
service-account token (here an in-process stand-in with a certificate from the bundle's CA)."""

from __future__ import annotations

import base64

import pytest

from tests.support.exports import export, secrets_of
from tests.support.kube_api import stand_in_api_server


@pytest.fixture
def api_server(own_bundle, tmp_path, monkeypatch):
    pair = own_bundle.leaf_paths("jwks", "server")  # SANs include 127.0.0.1
    with stand_in_api_server(pair, own_bundle.ca_file, tmp_path / "serviceaccount", "temporal-prod", monkeypatch) as calls:
        yield calls


def test_reminted_tokens_are_patched_into_the_exported_secrets(own_bundle, api_server, tmp_path):
    for path in own_bundle.layout.token("system").parent.glob("*.jwt"):
        path.unlink()  # a fresh refresher pod: its token volume starts empty
    result = own_bundle.run("mint-tokens", "--kubernetes-secrets", "temporal-bundle")
    assert result.code == 0, result.err
    patched = {path.rsplit("/", 1)[1]: body["data"] for path, _, body in api_server}
    assert {path.rsplit("/", 1)[0] for path, _, _ in api_server} == {"/api/v1/namespaces/temporal-prod/secrets"}
    assert all(h["Authorization"] == "Bearer sa-token" and h["Content-Type"] == "application/merge-patch+json"
               for _, h, _ in api_server)
    roles = [r.name for r in own_bundle.config.roles]
    assert set(patched) == {f"temporal-bundle-role-{r}" for r in roles} | {"temporal-bundle-admintools"}
    for role in roles:
        token = base64.b64decode(patched[f"temporal-bundle-role-{role}"][f"{role}.jwt"])
        assert token.decode().strip() == own_bundle.token(role)
    assert base64.b64decode(patched["temporal-bundle-admintools"]["token"]).decode() == own_bundle.token("system")

    # The patched names and keys are the ones export-helm writes, and only the token keys change.
    exported = secrets_of(_export(own_bundle, tmp_path))
    for name, data in patched.items():
        assert set(data) < set(exported[name])

    api_server.clear()
    assert own_bundle.run("mint-tokens", "--kubernetes-secrets", "temporal-bundle").code == 0
    assert api_server == []  # nothing re-minted, nothing patched


def _export(bundle, tmp_path):
    dest = tmp_path / "export"
    assert export(bundle, dest).code == 0
    return dest


def test_outside_a_pod_it_is_one_clear_error(own_bundle, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    own_bundle.run("mint-tokens", "--kubernetes-secrets", "temporal-bundle").assert_one_error("inside a Kubernetes pod")
