"""export-helm with workload identity: the exchange's Deployment, Service and NetworkPolicy, an
example worker pod with a projected service-account token, and no Secret holding an application's
token or any signing key but the exchange's."""

from __future__ import annotations

import kubernetes_validate
import pytest
import yaml

from bootstrap.ops.plan import load_exchange_key, load_signing_keys
from bootstrap.store import Layout
from tests.support.bundles import make_bundle
from tests.support.exports import (KUBERNETES_VERSION, WORKLOAD_IDENTITY, by_kind, documents, export, private_keys_in,
                                   public_bytes, secrets_of)

CONFIG = """\
namespaces: [{name: orders}, {name: billing}]
kubernetes: {namespace: temporal-prod}
""" + WORKLOAD_IDENTITY


@pytest.fixture(scope="module")
def wi_export(tmp_path_factory):
    bundle = make_bundle(tmp_path_factory.mktemp("wi-bundle"), CONFIG)
    dest = tmp_path_factory.mktemp("wi-export") / "out"
    result = export(bundle, dest)
    assert result.code == 0, result.err
    return bundle, dest


def test_every_document_passes_strict_validation(wi_export):
    _, dest = wi_export
    docs = documents(dest)
    for name, doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    assert (dest / "manifests/token-exchange.yaml").exists()
    assert not (dest / "manifests/token-refresher.yaml").exists()


def test_exchange_deployment_service_and_network_policy(wi_export):
    bundle, dest = wi_export
    deployment = by_kind(dest, "Deployment")["token-exchange"]
    spec = deployment["spec"]["template"]["spec"]
    assert spec["containers"][0]["args"] == ["serve-exchange", "--port", "8444"]
    assert spec["serviceAccountName"] == "temporal-token-exchange"
    [secret_volume] = [v for v in spec["volumes"] if "secret" in v]
    assert secret_volume["secret"]["secretName"] == "temporal-bundle-token-exchange"
    paths = {item["path"] for item in secret_volume["secret"]["items"]}
    layout = Layout(bundle.root)
    assert paths == {"exchange/server.pem", "exchange/server.key", "exchange/signing.key", "trust/ca.pem"}
    assert str(layout.exchange_signing_key.relative_to(layout.root)) in paths
    assert by_kind(dest, "Service")["token-exchange"]["spec"]["ports"][0]["port"] == 8444
    policy = by_kind(dest, "NetworkPolicy")["temporal-token-exchange"]
    assert policy["spec"]["ingress"][0]["ports"][0]["port"] == 8444
    # Workers in other namespaces reach it by its namespaced name: its certificate says so.
    from bootstrap.core.pki import load_cert, sans_of

    cert = load_cert(layout.leaf("exchange", "server")[0].read_bytes(), "exchange cert")
    assert "token-exchange.temporal-prod.svc" in sans_of(cert)


def test_the_exchange_may_review_tokens_and_nothing_more(wi_export):
    _, dest = wi_export
    docs = [d for d in yaml.safe_load_all((dest / "manifests/token-exchange.yaml").read_text()) if d]
    bindings = [d for d in docs if d["kind"] in ("ClusterRoleBinding", "RoleBinding")]
    assert [(b["roleRef"]["name"], b["subjects"]) for b in bindings] == [
        ("system:auth-delegator", [{"kind": "ServiceAccount", "name": "temporal-token-exchange", "namespace": "temporal-prod"}])]
    assert not [d for d in docs if d["kind"] in ("Role", "ClusterRole")]


def test_example_worker_pod_has_a_projected_token_and_no_token_secret(wi_export):
    _, dest = wi_export
    [pod] = [d for name, d in documents(dest) if d["kind"] == "Pod"]
    assert pod["metadata"]["namespace"] == "orders"
    projected = [v for v in pod["spec"]["volumes"] if "projected" in v][0]["projected"]["sources"][0]["serviceAccountToken"]
    assert projected == {"audience": "temporal-service", "expirationSeconds": 3600, "path": "token"}
    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    assert env["TEMPORAL_EXCHANGE_URL"] == "https://token-exchange.temporal-prod.svc:8444/token"
    assert env["TEMPORAL_TOKEN_FILE"] == "/var/run/secrets/temporal/token"
    items = [v for v in pod["spec"]["volumes"] if "secret" in v][0]["secret"]["items"]
    assert not any(item["key"].endswith(".jwt") for item in items)


def test_no_secret_holds_an_application_token_or_a_signing_key_but_the_exchanges(wi_export):
    bundle, dest = wi_export
    layout = Layout(bundle.root)
    all_secrets = secrets_of(dest)
    app_tokens = {layout.token(role.name).read_bytes().strip() for role in bundle.config.roles if role.name != "system"}
    bundle_keys = {public_bytes(k.private_key) for k in load_signing_keys(layout).values()}
    exchange_key = public_bytes(load_exchange_key(layout).private_key)
    holders = []
    for name, data in all_secrets.items():
        for key, value in data.items():
            assert not any(token in value for token in app_tokens), (name, key)
            found = {public_bytes(k) for k in private_keys_in(value)}
            assert not found & bundle_keys, f"{name}/{key} holds the bundle's JWT signing key"
            if exchange_key in found:
                holders.append(name)
    assert holders == ["temporal-bundle-token-exchange"]
    assert "temporal-bundle-token-refresher" not in all_secrets
    worker = all_secrets["temporal-bundle-role-worker"]
    assert set(worker) == {"ca.pem", "worker.pem", "worker.key"}


def test_turning_it_off_removes_the_exchange_files(wi_export, tmp_path):
    import shutil

    bundle, dest = wi_export
    copy = tmp_path / "dest"
    shutil.copytree(dest, copy)
    off = tmp_path / "bundle.yaml"
    off.write_text(CONFIG.split("workload_identity:")[0])
    from tests.support.bundles import run_main

    result = run_main("export-helm", "--config", off, "--out", bundle.root, "--dest", copy)
    assert result.code == 0, result.err
    assert not (copy / "manifests/token-exchange.yaml").exists()
    assert not (copy / "examples/workload-identity-worker.yaml").exists()
    assert not (copy / "secrets/temporal-bundle-token-exchange.yaml").exists()
    assert yaml.safe_load((copy / "secrets/temporal-bundle-role-worker.yaml").read_text())["data"]["worker.jwt"]
