"""export-helm and the payload keys: only the codec server's Secret holds rings and KEKs and only
the codec server's Deployment mounts it; no worker-side Secret, volume or values entry holds
codec-keys/ or codec-kek/; the example workload-identity worker pod reaches the key service with
its exchanged token and its role Secret's client certificate (tests/server/test_workload_key_service.py
runs that path against the real server)."""

from __future__ import annotations

import pytest
import yaml

from tests.support.bundles import make_bundle
from tests.support.exports import WORKLOAD_IDENTITY, documents, export, secrets_of

CONFIG = """\
namespaces: [{name: orders}, {name: payments}]
kubernetes: {namespace: temporal-prod}
roles:
  system: {permissions: ["temporal-system:admin"]}
  worker: {permissions: ["orders:write"]}
  client: {permissions: ["orders:write"]}
  payments-worker: {permissions: ["payments:write"]}
""" + WORKLOAD_IDENTITY
CODEC_SECRET = "temporal-bundle-codec"
WORKLOAD_KINDS = ("Pod", "Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob")


@pytest.fixture(scope="module")
def custody_export(tmp_path_factory):
    bundle = make_bundle(tmp_path_factory.mktemp("custody-bundle"), CONFIG)
    dest = tmp_path_factory.mktemp("custody-export") / "out"
    result = export(bundle, dest)
    assert result.code == 0, result.err
    return bundle, dest


def codec_material(root) -> set[bytes]:
    return {p.read_bytes() for d in ("codec-keys", "codec-kek") for p in (root / d).iterdir() if p.name != "keys.json"}


def pod_spec(doc: dict) -> dict:
    spec = doc["spec"]
    if doc["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"] if "template" in spec else spec


def mounted_secrets(spec: dict) -> set[str]:
    """Every Secret a pod spec mounts (secret and projected volumes) or reads into its environment."""
    names = set()
    for volume in spec.get("volumes", []):
        if "secret" in volume:
            names.add(volume["secret"]["secretName"])
        for source in volume.get("projected", {}).get("sources", []):
            if "secret" in source:
                names.add(source["secret"]["name"])
    for container in spec.get("containers", []) + spec.get("initContainers", []):
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                names.add(ref["name"])
        for source in container.get("envFrom", []):
            if "secretRef" in source:
                names.add(source["secretRef"]["name"])
    return names


def test_only_the_codec_servers_secret_holds_rings_and_keks(custody_export):
    bundle, dest = custody_export
    material = codec_material(bundle.root)
    assert len(material) == 4, "two rings and two KEKs"
    holders = {}
    for name, data in secrets_of(dest).items():
        for key, value in data.items():
            if value in material or "codec-kek" in key or "codec-keys" in key:
                holders.setdefault(name, set()).add(key)
    assert holders == {CODEC_SECRET: {"codec-keys-keys.json", "codec-keys-orders.json", "codec-keys-payments.json",
                                      "codec-kek-orders.key", "codec-kek-payments.key"}}, holders


def test_no_workload_but_the_codec_server_mounts_key_material(custody_export):
    _, dest = custody_export
    mounts = {}
    for path, doc in documents(dest):
        if doc["kind"] in WORKLOAD_KINDS:
            mounts[f"{path}:{doc['kind']}/{doc['metadata']['name']}"] = mounted_secrets(pod_spec(doc))
    holders = [where for where, names in mounts.items() if CODEC_SECRET in names]
    assert holders == ["manifests/codec-server.yaml:Deployment/codec-server"], holders
    [worker] = [where for where in mounts if where.startswith("examples/")]
    assert mounts[worker] == {"temporal-bundle-role-worker"}
    # The chart's values (server, web, admintools pods) name no key material either.
    values = (dest / "values.yaml").read_text()
    assert CODEC_SECRET not in values and "codec-kek" not in values and "codec-keys" not in values


def test_the_example_worker_reaches_the_key_service_with_its_exchanged_token(custody_export):
    bundle, dest = custody_export
    [pod] = [d for _, d in documents(dest) if d["kind"] == "Pod"]
    container = pod["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["TEMPORAL_KEY_SERVICE_URL"] == "https://codec-server.temporal-prod.svc:8888/v1/keys"
    assert env["TEMPORAL_KEY_SERVICE_SERVER_NAME"] == "codec-server", "the name the codec certificate holds"
    secret = secrets_of(dest)["temporal-bundle-role-worker"]
    assert set(secret) == {"ca.pem", "worker.pem", "worker.key"}, "a client-domain certificate, no token, no key"
    assert secret["worker.pem"] == (bundle.root / "clients/worker.pem").read_bytes()
    # The codec server's Secret carries the client CA the key service checks that certificate with.
    assert secrets_of(dest)[CODEC_SECRET]["trust-client-ca.pem"] == (bundle.root / "trust/client/ca.pem").read_bytes()
    text = (dest / "examples/workload-identity-worker.yaml").read_text()
    assert "KeyServiceKeys.for_workload" in text
    assert yaml.safe_load_all(text)
