"""export-helm and the UI gate: the Web UI reaches the frontend through it, as in compose. The gate's
Secret holds its two certificates and the CAs that check them (no token, no other key), the
registration Job may patch exactly the one ConfigMap the gate reads the cluster info from, and
only the Web UI's pods may connect to it. (tests/server/test_ui_gate_export_cluster.py runs both from
their manifests against a real server.)"""

from __future__ import annotations

import pytest

from bootstrap.core import pki
from bootstrap.ops.namespaces import Registration
from tests.support.bundles import run_main
from tests.support.exports import by_kind, manifest, materialize, private_keys_in, public_bytes, secrets_of
from tests.support.kube_api import SERVICE_ACCOUNT_TOKEN, stand_in_api_server

GATE_SECRET, CLUSTER_INFO = "temporal-bundle-ui-gate", "temporal-bundle-cluster-info"


def test_the_web_ui_calls_the_gate_and_the_gate_the_frontend(values, exported, bundle):
    gate = manifest(exported, "manifests/ui-gate.yaml", "Deployment")
    service = manifest(exported, "manifests/ui-gate.yaml", "Service")
    args = gate["spec"]["template"]["spec"]["containers"][0]["args"]
    assert values["web"]["temporalAddress"] == f"{service['metadata']['name']}.temporal-prod.svc:{service['spec']['ports'][0]['port']}"
    assert args[args.index("--upstream") + 1] == f"temporal-frontend:{bundle.config.network.frontend_port}"
    # Its key sources are the server's (ours and the login issuer's), and it knows the issuer.
    sources = [args[i + 1] for i, a in enumerate(args) if a == "--jwks-url"]
    assert sources == [bundle.config.jwks_url, bundle.config.dex_jwks_url]
    assert args[args.index("--issuer") + 1] == bundle.config.oidc.login_issuer


def test_the_gate_secret_holds_its_own_pairs_and_cas_and_nothing_else(exported, bundle):
    data = secrets_of(exported)[GATE_SECRET]
    own = {public_bytes(pki.load_private_key(bundle.leaf_paths("ui-gate", name)[1].read_bytes(), name))
           for name in ("server", "client")}
    assert {public_bytes(k) for k in private_keys_in(b"".join(data.values()))} == own
    assert not any(key.endswith((".jwt", "token")) for key in data)
    layout = bundle.layout
    assert data["trust-client-ca.pem"] == layout.trust_files("client")[0].read_bytes()
    assert data["trust-ca.pem"] == layout.trust_bundle.read_bytes()


def test_only_the_registration_job_may_write_the_cluster_info_and_only_that(exported):
    objects = {kind: manifest(exported, "manifests/register-namespaces-job.yaml", kind)
               for kind in ("Job", "ServiceAccount", "Role", "RoleBinding")}
    job = objects["Job"]["spec"]["template"]["spec"]
    assert job["serviceAccountName"] == objects["ServiceAccount"]["metadata"]["name"] == "temporal-register-namespaces"
    args = job["containers"][0]["args"]
    assert args[args.index("--cluster-info-configmap") + 1] == CLUSTER_INFO
    assert objects["Role"]["rules"] == [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "patch"],
                                         "resourceNames": [CLUSTER_INFO]}]
    binding = objects["RoleBinding"]
    assert binding["roleRef"]["name"] == objects["Role"]["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "temporal-register-namespaces", "namespace": "temporal-prod"}]
    # The gate reads the key the Job writes, from that ConfigMap; it has no service account.
    gate = manifest(exported, "manifests/ui-gate.yaml", "Deployment")["spec"]["template"]["spec"]
    volume = next(v for v in gate["volumes"] if v["name"] == "cluster-info")
    mount = next(m for m in gate["containers"][0]["volumeMounts"] if m["name"] == "cluster-info")
    gate_args = gate["containers"][0]["args"]
    assert volume["configMap"]["name"] == CLUSTER_INFO
    assert gate_args[gate_args.index("--cluster-info") + 1] == f"{mount['mountPath']}/cluster.json"
    assert gate["automountServiceAccountToken"] is False
    assert "data" not in manifest(exported, "manifests/ui-gate.yaml", "ConfigMap")  # a re-apply keeps the Job's


def test_only_the_web_ui_pods_may_connect_to_the_gate(exported):
    policies = {name: policy["spec"] for name, policy in by_kind(exported, "NetworkPolicy").items()}
    gate = policies["temporal-ui-gate"]
    assert gate["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "ui-gate"
    assert gate["ingress"] == [{"from": [{"podSelector": {"matchLabels": {
        "app.kubernetes.io/name": "temporal", "app.kubernetes.io/instance": "temporal", "app.kubernetes.io/component": "web"}}}],
        "ports": [{"port": 7233, "protocol": "TCP"}]}]
    # ... and the gate may fetch the bundle's key set.
    jwks_from = [peer["podSelector"]["matchLabels"].get("app.kubernetes.io/component") for peer in policies["temporal-jwks"]["ingress"][0]["from"]]
    assert "ui-gate" in jwks_from


def test_the_job_puts_the_cluster_info_into_the_configmap(exported, bundle, tmp_path, monkeypatch):
    """The API call itself, with a stand-in API server; the frontend's answer is stubbed here (the
    server tier gets it from a real frontend)."""
    answer = '{"clusterName": "active"}'
    _stub_registration(monkeypatch, answer)
    args = _job_args(exported, tmp_path, monkeypatch)
    with stand_in_api_server(bundle.leaf_paths("jwks", "server"), bundle.ca_file, tmp_path / "sa", "temporal-prod", monkeypatch) as calls:
        result = run_main(*args)
    assert result.code == 0, result.err
    assert f"cluster info written to ConfigMap temporal-prod/{CLUSTER_INFO}" in result.out
    [(path, headers, body)] = calls
    assert path == f"/api/v1/namespaces/temporal-prod/configmaps/{CLUSTER_INFO}"
    assert headers["Authorization"] == f"Bearer {SERVICE_ACCOUNT_TOKEN}"
    assert headers["Content-Type"] == "application/merge-patch+json"
    assert body == {"data": {"cluster.json": answer + "\n"}}


def test_outside_a_pod_the_configmap_option_is_one_clear_error_before_any_call(bundle, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    result = run_main("register-namespaces", "--config", bundle.config_path, "--out", bundle.root,
                      "--address", "127.0.0.1:1", "--timeout", "0.1", "--cluster-info-configmap", CLUSTER_INFO)
    assert result.code == 1
    assert result.err.strip() == "error: --cluster-info-configmap works inside a Kubernetes pod only (KUBERNETES_SERVICE_HOST is unset)"


@pytest.mark.parametrize("status", [403, 404])
def test_an_api_server_refusal_fails_the_job(exported, bundle, tmp_path, monkeypatch, status):
    """A Role that does not allow the patch, or a ConfigMap never applied, fails the Job (Kubernetes
    retries it) with one line naming the object."""
    _stub_registration(monkeypatch, "{}")
    args = _job_args(exported, tmp_path, monkeypatch)
    with stand_in_api_server(bundle.leaf_paths("jwks", "server"), bundle.ca_file, tmp_path / "sa", "temporal-prod",
                             monkeypatch, status=status):
        result = run_main(*args)
    assert result.code == 1
    assert result.err.strip().startswith(f"error: updating ConfigMap {CLUSTER_INFO}: the API server answered {status}")


def _stub_registration(monkeypatch, cluster_info: str) -> None:
    async def registered(*args, **kwargs):
        return Registration([], cluster_info, 0.1, 0.2)

    monkeypatch.setattr("bootstrap.commands.register_namespaces.register_all", registered)


def _job_args(exported, tmp_path, monkeypatch) -> list[str]:
    """The Job's args, its mounts laid out under tmp_path and its environment set."""
    args, env = materialize(exported, manifest(exported, "manifests/register-namespaces-job.yaml", "Job"), tmp_path / "job")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return args


def test_the_exported_gate_has_the_memory_budget_of_the_compose_gate(exported):
    """The gate derives its message slots from its container's memory: the pod's limit must give it
    as many as compose's mem_limit does, so a Kubernetes UI is not starved where compose's is not."""
    from bootstrap.servers.gate import GateBudget
    from tests.support.memory_limit import compose_memory_limit, parse_size

    gate = manifest(exported, "manifests/ui-gate.yaml", "Deployment")["spec"]["template"]["spec"]["containers"][0]
    limit = parse_size(gate["resources"]["limits"]["memory"].replace("Mi", "m").replace("Gi", "g"))
    args = gate["args"]
    calls = int(args[args.index("--max-concurrent-calls") + 1]) if "--max-concurrent-calls" in args else 256
    pod, compose = GateBudget(limit, calls), GateBudget(compose_memory_limit("ui-gate"), 256)
    assert pod.slots >= compose.slots >= 2, (pod.slots, compose.slots)
