"""The export on a real kube-apiserver: every Secret and manifest is admitted as docs/kubernetes.md
applies them, and the two service accounts that call the API are held by the real RBAC
authorizer to exactly their objects, with TokenRequest tokens of those service accounts (what the
kubelet would project into their pods). The namespace's Pod Security labels are enforced by the
API server's own admission: no pod there steps out of its container."""

from __future__ import annotations

import json
import ssl

import pytest
import yaml

from bootstrap.errors import BundleError
from bootstrap.ops.export_helm.names import names as export_names
from bootstrap.ops.kube_secrets import ApiServer
from tests.support.kube_cluster import SERVICE_ACCOUNT_ISSUER
from tests.support.kube_temporal import RESTRICTED_CONTAINER, restricted_pod_security


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
    # Every workload of ours meets `restricted`, which namespace.yaml enforces (see below).
    assert "PodSecurity" not in applied.stderr, applied.stderr


# The probes' own account: the API server looks a pod's account up before Pod Security runs, and
# without kube-controller-manager (this module runs without a node) no namespace has `default`.
PROBE_ACCOUNT = "pod-security-probe"
RESTRICTED_POD = restricted_pod_security(10001)


def _pod(name: str, container: dict | None = None, **spec) -> dict:
    """A pod `restricted` admits, but for what container and spec change."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"serviceAccountName": PROBE_ACCOUNT, "automountServiceAccountToken": False,
                     "securityContext": RESTRICTED_POD,
                     "containers": [{"name": "probe", "image": "probe:local", "command": ["sleep", "3600"],
                                     "securityContext": RESTRICTED_CONTAINER, **(container or {})}], **spec}}


# What a person who may create pods in the release's namespace could use to step out of the
# container, each with the words of the check that must refuse it: NetworkPolicies do not hold a
# host-network pod, a host path reads every Secret the kubelet mounted on the node (other
# namespaces' too), and root or SYS_ADMIN make a container breakout that much closer.
# (`privileged` is not among them: this API server refuses it in every namespace,
# --allow-privileged=false, so it cannot tell the label's part.)
ESCAPES = {
    "host-network": (_pod("host-network", hostNetwork=True), "hostNetwork=true"),
    "host-pid": (_pod("host-pid", hostPID=True), "hostPID=true"),
    "host-ipc": (_pod("host-ipc", hostIPC=True), "hostIPC=true"),
    "host-path": (_pod("host-path", volumes=[{"name": "kubelet", "hostPath": {"path": "/var/lib/kubelet/pods"}}],
                       container={"volumeMounts": [{"name": "kubelet", "mountPath": "/pods"}]}), "hostPath"),
    "host-port": (_pod("host-port", container={"ports": [{"containerPort": 7233, "hostPort": 7233}]}), "hostPort"),
    "sys-admin": (_pod("sys-admin", container={"securityContext": {
        **RESTRICTED_CONTAINER, "capabilities": {"drop": ["ALL"], "add": ["SYS_ADMIN"]}}}), "SYS_ADMIN"),
    "root": (_pod("root", securityContext={**RESTRICTED_POD, "runAsNonRoot": False, "runAsUser": 0}), "runAsUser=0"),
    "privilege-escalation": (_pod("privilege-escalation", container={"securityContext": {
        **RESTRICTED_CONTAINER, "allowPrivilegeEscalation": True}}), "allowPrivilegeEscalation"),
}


def _dry_run(kube, namespace: str, doc: dict):
    """The API server's whole admission of the object (Pod Security included), nothing stored."""
    kube.kubectl("create", "serviceaccount", PROBE_ACCOUNT, "-n", namespace, check=False)  # once
    return kube.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", input=json.dumps(doc), check=False)


def test_the_release_namespace_refuses_every_pod_that_steps_out_of_its_container(kube, installed):
    _, _, namespace, _ = installed
    for name, (pod, check) in ESCAPES.items():
        answer = _dry_run(kube, namespace, pod)
        assert answer.returncode != 0 and 'violates PodSecurity "restricted:latest"' in answer.stderr, (name, answer)
        assert check in answer.stderr, (name, answer.stderr)
    # The same API server admits the probe without its escape there, with no warning, and admits
    # the escapes where no label asks for Pod Security: the refusals are the namespace's.
    plain = _dry_run(kube, namespace, _pod("plain"))
    assert plain.returncode == 0 and "PodSecurity" not in plain.stderr, plain
    kube.kubectl("create", "namespace", "unlabelled")
    try:
        for name in ("host-network", "host-path", "root"):
            assert _dry_run(kube, "unlabelled", ESCAPES[name][0]).returncode == 0, name
    finally:
        kube.kubectl("delete", "namespace", "unlabelled", "--wait=false")


def test_a_workload_weakened_below_restricted_draws_the_warning(kube, installed):
    """The check above can fail: one of our Deployments without its seccomp profile is warned about."""
    _, dest, namespace, _ = installed
    deployment = next(d for d in _documents(dest / "manifests") if d["kind"] == "Deployment")
    del deployment["spec"]["template"]["spec"]["securityContext"]["seccompProfile"]
    answer = _dry_run(kube, namespace, deployment)
    assert answer.returncode == 0 and 'would violate PodSecurity "restricted:latest"' in answer.stderr, answer
    assert "seccompProfile" in answer.stderr


def test_the_exported_worker_example_is_admitted_where_restricted_is_enforced(kube, installed_wi):
    _, dest, _, _ = installed_wi
    kube.kubectl("create", "namespace", "restricted-team")
    kube.kubectl("label", "namespace", "restricted-team", "pod-security.kubernetes.io/enforce=restricted")
    try:
        examples = _documents(dest / "examples")
        assert "Pod" in {doc["kind"] for doc in examples}
        for doc in examples:
            doc["metadata"]["namespace"] = "restricted-team"
            if doc["kind"] == "ServiceAccount":  # stored: the pod's admission looks its account up
                kube.apply(doc)
                continue
            answer = _dry_run(kube, "restricted-team", doc)
            assert answer.returncode == 0 and "PodSecurity" not in answer.stderr, (doc["kind"], answer)
        refused = _dry_run(kube, "restricted-team", ESCAPES["root"][0])
        assert refused.returncode != 0 and 'violates PodSecurity "restricted:latest"' in refused.stderr, refused
    finally:
        kube.kubectl("delete", "namespace", "restricted-team", "--wait=false")


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
