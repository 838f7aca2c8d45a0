"""The kube tier's pods (tests/support/kube_node.py runs them): waiting for one to finish, and the
export's example workload-identity worker pod as the tests run it against the cluster on this
machine's loopback."""

from __future__ import annotations

import json
import uuid

import yaml

from tests.support.kube_node import TOLERATION
from tests.support.waits import HarnessError, wait_until
from tests.support.workload import exchange_url


# The start of every worker script the kube tier's pods run (a ConfigMap mounted at /scripts; the
# pod has the bundle image, not the tests): imports, a workflow with one activity, and reading a
# token's claims without checking it (for printing its subject, groups, iat and exp, never itself).
POD_PRELUDE = '''\
import asyncio, base64, hashlib, json, os, sys, time, uuid
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from bootstrap.client import WorkloadIdentity, connect_workload
from bootstrap.core.codec import data_converter
from bootstrap.key_client import KeyServiceError, KeyServiceKeys


@activity.defn
async def greet(name: str) -> str:
    return f"hello, {name}"


@workflow.defn
class PodGreeting:
    @workflow.run
    async def run(self, name: str) -> str:
        return await workflow.execute_activity(greet, name, start_to_close_timeout=timedelta(seconds=20))


def claims(token):
    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


'''


def wait_for_default_account(kube, namespace: str) -> None:
    """The controller manager's service-account controller creates it; pods are refused before."""
    wait_until(lambda: kube.kubectl("get", "serviceaccount", "default", "-n", namespace, check=False).returncode == 0,
               60, f"serviceaccount default in {namespace}")


def finished(kube, namespace: str, pod: str, timeout: float = 180) -> dict:
    def phase():
        doc = kube.get("pod", pod, "-n", namespace)
        return doc if doc["status"].get("phase") in ("Succeeded", "Failed") else None
    try:
        return wait_until(phase, timeout, f"pod {namespace}/{pod} to finish")
    except HarnessError:
        events = kube.kubectl("get", "events", "-n", namespace, check=False).stdout
        raise HarnessError(f"pod {namespace}/{pod} did not finish; events:\n{events}") from None


def run_exported_deployment(kube, namespace: str, deployment: str, image: str) -> None:
    """An exported Deployment on the node: its image a local one, one replica, the node's taint
    tolerated; everything else (Secrets, config, service account, probes) as exported."""
    container = kube.get("deployment", deployment, "-n", namespace)["spec"]["template"]["spec"]["containers"][0]["name"]
    patch = {"spec": {"replicas": 1, "template": {"spec": {"tolerations": [TOLERATION], "containers": [
        {"name": container, "image": image, "imagePullPolicy": "Never"}]}}}}
    kube.kubectl("patch", "deployment", deployment, "-n", namespace, "--type=strategic", "-p", json.dumps(patch))
    rolled_out(kube, namespace, deployment)


def rolled_out(kube, namespace: str, deployment: str, timeout: int = 180) -> None:
    """Every replica of the Deployment ready; else its pods and its last log lines, in the error."""
    # kubectl's own bound first: the subprocess's (120 s unless told) must not cut a longer wait short.
    rollout = kube.kubectl("rollout", "status", f"deployment/{deployment}", "-n", namespace, f"--timeout={timeout}s",
                           check=False, timeout=timeout + 30)
    if rollout.returncode != 0:
        pods = kube.kubectl("get", "pods", "-n", namespace, "-o", "wide", check=False).stdout
        logs = kube.kubectl("logs", f"deployment/{deployment}", "-n", namespace, "--tail=40", check=False)
        raise HarnessError(f"{deployment} not ready: {rollout.stderr}\n{pods}\n{logs.stdout}{logs.stderr}")


def example_worker(kube_wi, installed_wi, key_service: str) -> dict:
    """The export's example workload-identity worker pod (examples/workload-identity-worker.yaml),
    its identity volume and security context as exported; what it runs and where it connects
    changed to the test's worker and the server-tier cluster, exchange and key service on this
    machine's loopback (hence hostNetwork: they listen on the host's 127.0.0.1, outside the
    cluster), and the node's taint tolerated."""
    _, dest, _, _ = installed_wi
    docs = list(yaml.safe_load_all((dest / "examples" / "workload-identity-worker.yaml").read_text()))
    pod = next(d for d in docs if d and d["kind"] == "Pod")
    spec = pod["spec"]
    container = spec["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    env["TEMPORAL_ADDRESS"] = {"name": "TEMPORAL_ADDRESS", "value": kube_wi.address}
    env["TEMPORAL_EXCHANGE_URL"] = {"name": "TEMPORAL_EXCHANGE_URL", "value": exchange_url(kube_wi)}
    assert {"TEMPORAL_KEY_SERVICE_URL", "TEMPORAL_KEY_SERVICE_SERVER_NAME"} <= env.keys()  # as exported
    env["TEMPORAL_KEY_SERVICE_URL"] = {"name": "TEMPORAL_KEY_SERVICE_URL", "value": key_service}
    env["TEMPORAL_KEY_SERVICE_SERVER_NAME"] = {"name": "TEMPORAL_KEY_SERVICE_SERVER_NAME", "value": "localhost"}
    env["OTHER_NAMESPACE"] = {"name": "OTHER_NAMESPACE", "value": "payments-team"}
    env["POD_NAME"] = {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    container.update(command=["python3", "/scripts/pod_worker.py"], imagePullPolicy="Never", env=list(env.values()))
    container["volumeMounts"].append({"name": "scripts", "mountPath": "/scripts", "readOnly": True})
    spec["volumes"].append({"name": "scripts", "configMap": {"name": "pod-worker"}})
    spec.update(restartPolicy="Never", hostNetwork=True, tolerations=[TOLERATION])
    return pod


def start_worker(kube, kube_node, kube_wi, example: dict, namespace: str, script: str,
                 script_name: str = "pod-worker") -> str:
    """The example worker pod started, with its service account, client-certificate Secret and
    script (a ConfigMap of that name) in that Kubernetes namespace (also its Temporal namespace);
    the pod's name."""
    pod = json.loads(json.dumps(example))
    name = f"worker-{uuid.uuid4().hex[:6]}"
    pod["metadata"].update(name=name, namespace=namespace)
    container = pod["spec"]["containers"][0]
    container["image"] = kube_node.bundle_image
    for entry in container["env"]:
        if entry["name"] == "TEMPORAL_NAMESPACE":
            entry["value"] = namespace
    for volume in pod["spec"]["volumes"]:
        if "configMap" in volume:
            volume["configMap"]["name"] = script_name
    account = pod["spec"]["serviceAccountName"]
    secret = next(v["secret"] for v in pod["spec"]["volumes"] if "secret" in v)
    files = {item["key"]: kube_wi.bundle / item["path"] for item in secret["items"]}
    kube.kubectl("create", "serviceaccount", account, "-n", namespace, check=False)
    kube.kubectl("create", "secret", "generic", secret["secretName"], "-n", namespace,
                 *[f"--from-file={key}={path}" for key, path in files.items()], check=False)
    kube.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": script_name, "namespace": namespace},
                "data": {"pod_worker.py": script}})
    kube.apply(pod)
    return name


def run_worker(kube, kube_node, kube_wi, example: dict, namespace: str, script: str,
               timeout: float = 180) -> tuple[str, dict, str]:
    """The example worker pod run to its end (start_worker); its name, final state, and the token
    the kubelet wrote into its projected volume on this node (read while the pod runs: the kubelet
    removes a finished pod's volumes)."""
    name = start_worker(kube, kube_node, kube_wi, example, namespace, script)
    uid = kube.kubectl("get", "pod", name, "-n", namespace, "-o", "jsonpath={.metadata.uid}").stdout
    volume = next(v for v in example["spec"]["volumes"] if "projected" in v)
    token_file = kube_node.kubelet_volume_file(uid, volume["name"],
                                               volume["projected"]["sources"][0]["serviceAccountToken"]["path"])
    token = wait_until(lambda: token_file.is_file() and token_file.read_text(), 120,
                       f"the kubelet to project {token_file}")
    return name, finished(kube, namespace, name, timeout), token
