"""The export tier's helpers: run the real `export-helm` command, read what it wrote (Secrets
decoded, private keys found), and lay out what a workload's container would mount."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest
import yaml

from bootstrap.core import pki
from bootstrap.errors import BundleError
from tests.support.binaries import configcheck_bin
from tests.support.bundles import run_main

CONFIG = """\
namespaces: [{name: default}, {name: other}]
persistence: {num_history_shards: 8}
kubernetes:
  namespace: temporal-prod
  replicas: {history: 3, matching: 2}
  frontend_exposure: loadbalancer
"""


# workload_identity as a cluster sets it: the in-cluster service-account paths of the exchange's pod.
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
WORKLOAD_IDENTITY = f"""\
workload_identity:
  issuers:
    - name: cluster
      issuer: https://kubernetes.default.svc.cluster.local
      audience: temporal-service
      jwks_uri: https://kubernetes.default.svc/openid/v1/jwks
      ca_file: {SERVICE_ACCOUNT_DIR}/ca.crt
      auth_token_file: {SERVICE_ACCOUNT_DIR}/token
"""

def export(bundle, dest: Path, *extra):
    return run_main("export-helm", "--config", bundle.config_path, "--out", bundle.root, "--dest", dest, *extra)


def export_cluster(cluster, dest: Path) -> Path:
    """export-helm of a server-tier cluster's bundle into dest; dest."""
    result = run_main("export-helm", "--config", cluster.config_path, "--out", cluster.bundle, "--dest", dest)
    assert result.code == 0, result.err
    return dest


def read_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def secrets_of(dest: Path) -> dict[str, dict[str, bytes]]:
    """Secret name -> {key: decoded bytes}, from every file under secrets/."""
    result = {}
    for path in sorted((dest / "secrets").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        result[doc["metadata"]["name"]] = {k: base64.b64decode(v) for k, v in doc["data"].items()}
    return result


def private_keys_in(data: bytes) -> list:
    """Every PEM private key in a Secret value, parsed (whatever the key is called)."""
    keys, marker = [], b"-----BEGIN "
    for block in data.split(marker)[1:]:
        pem = marker + block
        if b"PRIVATE KEY-----" in pem.split(b"\n", 1)[0]:
            end = pem.index(b"-----END")
            pem = pem[: pem.index(b"\n", end) + 1] if b"\n" in pem[end:] else pem
            try:
                keys.append(pki.load_private_key(pem, "secret value"))
            except BundleError:
                pytest.fail("a Secret holds a PEM private key we cannot parse")
    return keys


def public_bytes(key) -> bytes:
    return pki.public_key_bytes(key.public_key())


def materialize(exported: Path, workload: dict, root: Path,
                configmaps: dict[str, dict[str, str]] | None = None) -> tuple[list[str], dict[str, str]]:
    """Write what the workload's container mounts under root; return its args and environment.
    ConfigMaps: the bundle.yaml one as exported, others with the data given in configmaps (what
    something else put there at run time), else as exported."""
    spec = workload["spec"]["template"]["spec"]
    volumes, container = {v["name"]: v for v in spec["volumes"]}, spec["containers"][0]
    secrets = secrets_of(exported)
    exported_maps = {d["metadata"]["name"]: d.get("data") or {} for path in sorted((exported / "manifests").glob("*.yaml"))
                     for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "ConfigMap"}
    exported_maps.update(configmaps or {})
    for mount in container["volumeMounts"]:
        target, volume = root / mount["mountPath"].lstrip("/"), volumes[mount["name"]]
        target.mkdir(parents=True, exist_ok=True)
        if "secret" in volume:
            data = secrets[volume["secret"]["secretName"]]
            for item in volume["secret"]["items"]:
                (target / item["path"]).parent.mkdir(parents=True, exist_ok=True)
                (target / item["path"]).write_bytes(data[item["key"]])
        elif "configMap" in volume:
            for key, text in exported_maps[volume["configMap"]["name"]].items():
                (target / key).write_text(text)
    env = {e["name"]: str(root / e["value"].lstrip("/")) for e in container.get("env", [])}
    return container["args"], env


# A current Kubernetes version whose schemas kubernetes-validate ships (no download needed).
KUBERNETES_VERSION = "1.37.0"


def documents(dest: Path) -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(dest.rglob("*.yaml")):
        if path.name == "values.yaml":
            continue
        docs += [(str(path.relative_to(dest)), d) for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return docs


def configcheck(config: dict, path: Path) -> subprocess.CompletedProcess:
    path.write_text(yaml.safe_dump(config))
    return subprocess.run([str(configcheck_bin()), str(path)], capture_output=True, text=True)


def env_of(values: dict, component: str = "web") -> dict:
    """name -> value, or ("secret", name, key) for a valueFrom."""
    env = {}
    for item in values[component]["additionalEnv"]:
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        env[item["name"]] = ("secret", ref["name"], ref["key"]) if ref else item["value"]
        assert ref or isinstance(item["value"], str), f"{item['name']}: Kubernetes wants a string"
    return env


def web_mounts(values: dict) -> dict[str, dict]:
    """mount path -> volume source, for the web pods."""
    volumes = {v["name"]: v for v in values["web"]["additionalVolumes"]}
    return {m["mountPath"]: volumes[m["name"]] for m in values["web"]["additionalVolumeMounts"]}


def manifest(dest, path: str, kind: str) -> dict:
    return next(d for d in yaml.safe_load_all((dest / path).read_text()) if d and d["kind"] == kind)


def by_kind(dest, kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for _, d in documents(dest) if d["kind"] == kind}
