"""The export on a real kube-apiserver: every Secret and manifest is admitted as docs/kubernetes.md
applies them, and the two service accounts that call the API are held by the real RBAC
authorizer to exactly their objects, with TokenRequest tokens of those service accounts (what the
kubelet would project into their pods)."""

from __future__ import annotations

import json
import ssl

import pytest
import yaml

from bootstrap.errors import BundleError
from bootstrap.ops.export_helm.names import names as export_names
from bootstrap.ops.kube_secrets import ApiServer
from tests.support.kube_cluster import SERVICE_ACCOUNT_ISSUER


def _names(kube_bundle) -> dict:
    return export_names(kube_bundle.config)


def _documents(root) -> list[dict]:
    docs = []
    for path in sorted(root.rglob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


@pytest.mark.parametrize("which", ["installed", "installed_wi"])
def test_every_exported_object_is_admitted_by_the_api_server(kube, which, request):
    _, dest, namespace, applied = request.getfixturevalue(which)
    assert applied.returncode == 0, applied.stderr
    expected = {(d["kind"], d["metadata"]["name"]) for d in _documents(dest / "secrets") + _documents(dest / "manifests")}
    assert len(expected) > 20
    listed = kube.get("secrets,configmaps,serviceaccounts,roles,rolebindings,deployments,services,jobs,"
                      "networkpolicies,clusterrolebindings", "-n", namespace)
    present = {(item["kind"], item["metadata"]["name"]) for item in listed["items"]}
    assert expected <= present, sorted(expected - present)


def _api_as(kube, namespace: str, account: str) -> ApiServer:
    """The API client the bundle's in-cluster commands use, with the service account's token."""
    token = kube.create_token(namespace, account, SERVICE_ACCOUNT_ISSUER)
    return ApiServer(kube.server, namespace, token, ssl.create_default_context(cafile=str(kube.ca_file)))


def test_the_token_refresher_may_patch_its_token_secrets_and_nothing_else(kube, installed):
    kube_bundle, dest, namespace, _ = installed
    names = _names(kube_bundle)
    refresher = _api_as(kube, namespace, f"{kube_bundle.config.kubernetes.release}-token-refresher")
    role = f"{names['role']}-{kube_bundle.config.roles[0].name}"
    refresher.patch_secret(role, {f"{kube_bundle.config.roles[0].name}.jwt": b"re-minted"})
    refresher.patch_secret(names["admintools"], {"token": b"re-minted"})
    stored = kube.get("secret", role, "-n", namespace)
    assert "cmUtbWludGVk" in stored["data"].values()  # base64 of "re-minted"
    for other in (names["frontend_tls"], names["jwks"], names["codec"]):
        with pytest.raises(BundleError, match="403"):
            refresher.patch_secret(other, {"tls.key": b"attacker"})
    assert _forbidden(kube, refresher.token, "get", "secrets", "-n", namespace)
    assert _forbidden(kube, refresher.token, "get", "secret", names["frontend_tls"], "-n", namespace)
    assert _forbidden(kube, refresher.token, "get", "configmaps", "-n", namespace)
    assert _forbidden(kube, refresher.token, "get", "secrets", "-n", "default")


def test_the_registration_job_may_get_and_patch_its_configmap_only(kube, installed):
    kube_bundle, dest, namespace, _ = installed
    names = _names(kube_bundle)
    registrar = _api_as(kube, namespace, f"{kube_bundle.config.kubernetes.release}-register-namespaces")
    registrar.patch_configmap(names["cluster_info"], {"cluster-info.json": "{}"})
    got = kube.kubectl("get", "configmap", names["cluster_info"], "-n", namespace, "-o", "json",
                       as_token=registrar.token)
    assert json.loads(got.stdout)["data"] == {"cluster-info.json": "{}"}
    with pytest.raises(BundleError, match="403"):
        registrar.patch_configmap(names["config"], {"bundle.yaml": "attacker"})
    with pytest.raises(BundleError, match="403"):
        registrar.patch_secret(names["registrar"], {"tls.key": b"attacker"})
    assert _forbidden(kube, registrar.token, "get", "configmaps", "-n", namespace)
    assert _forbidden(kube, registrar.token, "create", "configmap", "extra", "-n", namespace)
    assert _forbidden(kube, registrar.token, "delete", "configmap", names["cluster_info"], "-n", namespace)


def _forbidden(kube, token: str, *args: str) -> bool:
    result = kube.kubectl(*args, as_token=token, check=False)
    return result.returncode != 0 and "forbidden" in result.stderr.lower()


def test_the_token_exchange_may_review_tokens_and_nothing_else(kube, installed_wi):
    bundle, _, namespace, _ = installed_wi
    token = kube.create_token(namespace, f"{bundle.config.kubernetes.release}-token-exchange", SERVICE_ACCOUNT_ISSUER)
    def can(verb: str, resource: str) -> str:  # the API server's own answer (SelfSubjectAccessReview)
        return kube.kubectl("auth", "can-i", verb, resource, "-n", namespace, as_token=token, check=False).stdout.strip()

    assert can("create", "tokenreviews.authentication.k8s.io") == "yes"
    for verb, resource in (("get", "secrets"), ("list", "pods"), ("create", "serviceaccounts/token"),
                           ("patch", "configmaps"), ("create", "pods")):
        assert can(verb, resource) == "no", (verb, resource)
    assert _forbidden(kube, token, "get", "secrets", "-n", namespace)
