"""Pods that really run, on a node of the kube tier's cluster (tests/support/kube_node.py: kubelet
v1.37.2 on containerd + runc + CNI bridge, kube-scheduler, kube-controller-manager): the node is
Ready, a pod of the bundle image runs to completion and its logs come back through the API server,
and the export's example workload-identity worker pod, whose projected token the KUBELET requests
and writes, trades it at the bundle's exchange, fetches its namespace's data keys from the key
service with the exchanged token (the pod mounts no ring and no KEK) and runs a workflow from inside
the pod whose history the server holds encrypted; the same pod in a namespace no binding names is
refused; and a NetworkPolicy closes a pod to all but the pods it names while it exists, and with
the enforcer down new pod connections are dropped."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import json
import re
import uuid

import jwt
import yaml
from temporalio.api.common.v1 import Payload

from bootstrap.core.codec import ENCODING, decrypt
from bootstrap.core.tokens import verify_token
from tests.support import kube_netpol
from tests.support.codec import bundle_keys
from tests.support.kube_cluster import EXCHANGE_AUDIENCE, SERVICE_ACCOUNT_ISSUER
from tests.support.kube_node import NODE_NAME, POD_SUBNET, TOLERATION
from tests.support.kube_pods import (POD_PRELUDE, example_worker, finished, run_exported_deployment, run_worker,
                                     wait_for_default_account)
from tests.support.waits import wait_until
from tests.support.workload import post_exchange, raw_client

# What the worker container runs (a ConfigMap mounted at /scripts): the bundle's own
# connect_workload() with the projected token and the data converter of KeyServiceKeys.for_workload
# (as the example pod's comment says), then a worker and one workflow in its namespace. It prints
# the token's digest (never the token), the exchanged token's subject and groups, what the key
# service answers for another namespace's ring, and the workflow's id.
POD_WORKER = POD_PRELUDE + '''\
async def main():
    token_file = os.environ["TEMPORAL_TOKEN_FILE"]
    with open(token_file, "rb") as f:
        print("projected token sha256:", hashlib.sha256(f.read()).hexdigest(), flush=True)
    bundle, namespace = os.environ["BUNDLE_DIR"], os.environ["TEMPORAL_NAMESPACE"]
    identity = WorkloadIdentity(os.environ["TEMPORAL_EXCHANGE_URL"], token_file=token_file,
                                ca_file=os.path.join(bundle, "trust", "ca.pem"))
    keys = KeyServiceKeys.for_workload(os.environ["TEMPORAL_KEY_SERVICE_URL"], bundle_dir=bundle, identity=identity,
                                       server_name=os.environ["TEMPORAL_KEY_SERVICE_SERVER_NAME"])
    try:
        converter = data_converter(keys, namespace=namespace)  # fetches the ring now
        client, _ = await connect_workload(os.environ["TEMPORAL_ADDRESS"], exchange_url=os.environ["TEMPORAL_EXCHANGE_URL"],
                                           bundle_dir=bundle, token_file=token_file, namespace=namespace,
                                           server_name="localhost", data_converter=converter)
    except Exception as exc:
        print("exchange refused:", type(exc).__name__, str(exc)[:300], flush=True)
        os._exit(3)  # not sys.exit: the SDK's threads may hold stdout while the interpreter shuts down
    exchanged = claims(client.api_key)
    print("exchanged:", json.dumps({"sub": exchanged["sub"], "groups": exchanged.get("groups")}), flush=True)
    try:
        keys.ring(os.environ["OTHER_NAMESPACE"])
        print("other ring: given", flush=True)
    except KeyServiceError as exc:
        print("other ring:", exc, flush=True)
    queue = "pod-" + uuid.uuid4().hex[:8]
    # Unsandboxed: the workflow is defined in this script's __main__, which the sandbox cannot re-import.
    async with Worker(client, task_queue=queue, workflows=[PodGreeting], activities=[greet],
                      workflow_runner=UnsandboxedWorkflowRunner()):
        for attempt in range(40):  # a just-registered namespace reaches the frontend cache within ~10 s
            try:
                workflow_id = "pod-" + str(uuid.uuid4())
                result = await client.execute_workflow(PodGreeting.run, "card 4111 " + os.environ["POD_NAME"], id=workflow_id,
                                                       task_queue=queue, execution_timeout=timedelta(seconds=60))
                break
            except Exception as exc:
                if "not found" not in str(exc).lower() or attempt == 39:
                    raise
                await asyncio.sleep(0.5)
    print("workflow id:", workflow_id, flush=True)
    print("workflow result:", result, flush=True)


asyncio.run(main())
'''


def test_a_pod_of_the_bundle_image_runs_to_completion_on_the_ready_node(kube, kube_node):
    node = kube.get("node", NODE_NAME)
    conditions = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert conditions["Ready"] == "True", conditions
    assert node["status"]["nodeInfo"]["kubeletVersion"] == "v1.37.2"
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")

    namespace, pod = "node-smoke", f"smoke-{uuid.uuid4().hex[:6]}"
    kube.kubectl("create", "namespace", namespace)
    wait_for_default_account(kube, namespace)
    kube.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod, "namespace": namespace},
                "spec": {"restartPolicy": "Never", "tolerations": [TOLERATION], "containers": [{
                    "name": "bundle", "image": kube_node.bundle_image, "imagePullPolicy": "Never",
                    "args": ["sh", "-c", "temporal-bundle --version && echo pod=$(hostname)"]}]}})
    doc = finished(kube, namespace, pod)
    assert doc["status"]["phase"] == "Succeeded", doc["status"]
    assert doc["spec"]["nodeName"] == NODE_NAME  # placed by the scheduler
    assert ipaddress.ip_address(doc["status"]["podIP"]) in ipaddress.ip_network(POD_SUBNET)  # CNI bridge
    # The logs through the API server, which fetches them from the kubelet (its client
    # certificate, the kubelet's webhook authorization).
    logs = kube.kubectl("logs", pod, "-n", namespace).stdout.splitlines()
    assert re.fullmatch(r"temporal-bundle \S+", logs[0]), logs
    assert logs[1:] == [f"pod={pod}"]


def _probe_from(kube, kube_node, namespace: str, label: str, address: str) -> str:
    """What a fresh pod labelled app=<label> gets when it opens a TCP connection to address:
    "reached" or "unreachable: <why>" (its one log line)."""
    pod = f"probe-{label}-{uuid.uuid4().hex[:6]}"
    host, port = address.split(":")
    kube.apply({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod, "namespace": namespace, "labels": {"app": label}},
                "spec": {"restartPolicy": "Never", "tolerations": [TOLERATION], "containers": [{
                    "name": "probe", "image": kube_node.bundle_image, "imagePullPolicy": "Never",
                    "command": ["python3", "-c", PROBE, host, port]}]}})
    finished(kube, namespace, pod, timeout=60)
    return kube.kubectl("logs", pod, "-n", namespace).stdout.strip()


PROBE = """import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()
    print("reached")
except OSError as exc:
    print("unreachable:", type(exc).__name__)
"""


def _listener(kube, kube_node, namespace: str) -> str:
    """A pod labelled app=listener that accepts TCP on 8080, in a namespace of its own: its address."""
    kube.kubectl("create", "namespace", namespace)
    wait_for_default_account(kube, namespace)
    kube.apply({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "listener", "namespace": namespace, "labels": {"app": "listener"}},
                "spec": {"tolerations": [TOLERATION], "containers": [{
                    "name": "listener", "image": kube_node.bundle_image, "imagePullPolicy": "Never",
                    "command": ["python3", "-m", "http.server", "8080"]}]}})
    kube.kubectl("wait", "--for=condition=Ready", "pod/listener", "-n", namespace, "--timeout=60s", timeout=90)
    return f"{kube.get('pod', 'listener', '-n', namespace)['status']['podIP']}:8080"


def test_the_node_enforces_a_network_policy_from_the_moment_it_exists_until_it_is_deleted(kube, kube_node):
    """The node's enforcer (tests/support/kube_netpol.py) against a policy of this test's own: a
    pod that listens is reached by any pod before; once a NetworkPolicy admits only pods labelled
    `allowed` to it, another pod's connection is dropped while an allowed pod still gets through;
    deleted, the policy closes nothing. The export's policies are proven on the same enforcer by
    the verify Job (test_kube_temporal.py)."""
    namespace = "netpol-check"
    address = _listener(kube, kube_node, namespace)
    policy = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
              "metadata": {"name": "listener-allowed-only", "namespace": namespace},
              "spec": {"podSelector": {"matchLabels": {"app": "listener"}}, "policyTypes": ["Ingress"],
                       "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "allowed"}}}],
                                    "ports": [{"port": 8080, "protocol": "TCP"}]}]}}

    before = _probe_from(kube, kube_node, namespace, "other", address)
    kube.apply(policy)  # the enforcer learns it by a watch event: milliseconds, before a probe pod starts
    other, allowed = (_probe_from(kube, kube_node, namespace, label, address) for label in ("other", "allowed"))
    kube.kubectl("delete", "networkpolicy", "listener-allowed-only", "-n", namespace)
    after = _probe_from(kube, kube_node, namespace, "other", address)
    print(f"before the policy: {before}; with it: other {other}, allowed {allowed}; deleted: {after}")
    assert (before, other, allowed, after) == ("reached", "unreachable: TimeoutError", "reached", "reached")


def test_with_the_enforcer_gone_a_new_pod_connection_is_dropped_not_let_through(kube, kube_node):
    """Fail closed: the hand-off to the enforcer has no bypass. With its DaemonSet deleted (its pod
    gone, nothing listening on the queue), a pod no policy selects is not reached by a new
    connection; with the enforcer back, it is."""
    address = _listener(kube, kube_node, "netpol-down")
    kube.kubectl("delete", "daemonset", kube_netpol.NAME, "-n", kube_netpol.NAMESPACE, timeout=120)
    try:
        wait_until(lambda: not kube_netpol.queue_bound(), 90, "the enforcer's pod to stop reading its queue")
        down = _probe_from(kube, kube_node, "netpol-down", "other", address)
    finally:
        kube_node.start_network_policies()
    back = _probe_from(kube, kube_node, "netpol-down", "other", address)
    print(f"enforcer gone: {down}; back: {back}")
    assert (down, back) == ("unreachable: TimeoutError", "reached")


def test_a_kubelet_projected_token_runs_a_workflow_from_inside_the_pod(kube, kube_node, kube_wi, installed_wi,
                                                                     kube_key_service):
    example = example_worker(kube_wi, installed_wi, kube_key_service)
    volume = next(v for v in example["spec"]["volumes"] if "projected" in v)
    source = volume["projected"]["sources"][0]["serviceAccountToken"]
    assert source["audience"] == EXCHANGE_AUDIENCE  # the export projects what its exchange accepts
    _assert_mounts_no_key_material(example, kube_wi.bundle)

    name, doc, token = run_worker(kube, kube_node, kube_wi, example, "orders-team", POD_WORKER)
    logs = kube.kubectl("logs", name, "-n", "orders-team").stdout
    print(f"the pod's log:\n{logs[-3000:]}")  # shown when the test fails, whole
    assert doc["status"]["phase"] == "Succeeded", (doc["status"], logs)
    assert f"workflow result: hello, card 4111 {name}" in logs.splitlines()
    exchanged = json.loads(re.search(r"^exchanged: (.*)$", logs, re.M).group(1))
    assert exchanged == {"sub": "cluster:system:serviceaccount:orders-team:temporal-worker",
                         "groups": ["orders-team:write"]}
    other = re.search(r"^other ring: (.*)$", logs, re.M).group(1)
    assert "refused the data keys of namespace 'payments-team' (403" in other, other
    _assert_stored_encrypted(kube_wi, re.search(r"^workflow id: (\S+)$", logs, re.M).group(1), f"card 4111 {name}")

    # The token is the one the kubelet wrote into the pod's projected volume on this node (the
    # pod saw the same bytes), requested by the kubelet for this pod on this node.
    seen = re.search(r"^projected token sha256: (\w+)$", logs, re.M).group(1)
    assert seen == hashlib.sha256(token.encode()).hexdigest()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["iss"] == SERVICE_ACCOUNT_ISSUER and claims["aud"] == [EXCHANGE_AUDIENCE]
    assert claims["sub"] == "system:serviceaccount:orders-team:temporal-worker"
    assert claims["kubernetes.io"]["pod"] == {"name": name, "uid": doc["metadata"]["uid"]}
    assert claims["kubernetes.io"]["node"]["name"] == NODE_NAME
    assert claims["exp"] - claims["iat"] == source["expirationSeconds"]

    # Deleted, its pod's token no longer stands (the exchange asks the API server's TokenReview).
    assert post_exchange(kube_wi, token)[0] == 200
    kube.kubectl("delete", "pod", name, "-n", "orders-team")
    status, answer = wait_until(lambda: (lambda a: a if a[0] != 200 else None)(post_exchange(kube_wi, token)),
                                30, "the exchange to refuse the deleted pod's token")
    assert (status, answer.get("error")) == (400, "invalid_request"), answer


def _assert_mounts_no_key_material(example: dict, bundle) -> None:
    """The pod's volumes are its projected token and the role Secret's CA, certificate and key:
    no item is a ring or a KEK of the bundle."""
    kinds = sorted(next(iter(k for k in v if k != "name")) for v in example["spec"]["volumes"])
    assert kinds == ["configMap", "projected", "secret"], kinds  # the configMap is this test's script
    secret = next(v["secret"] for v in example["spec"]["volumes"] if "secret" in v)
    mounted = {(bundle / item["path"]).read_bytes() for item in secret["items"]}
    custody = {p.read_bytes() for d in ("codec-keys", "codec-kek") for p in (bundle / d).iterdir()}
    assert custody and not mounted & custody


def _assert_stored_encrypted(cluster, workflow_id: str, secret: str) -> None:
    """The workflow's input as the server stores it (read with a temporal-system:admin token,
    without the codec): ciphertext the namespace's ring opens."""
    async def stored():
        client = await raw_client(cluster, cluster.token("system"), namespace="orders-team")
        history = await client.get_workflow_handle(workflow_id).fetch_history()
        return list(history.events[0].workflow_execution_started_event_attributes.input.payloads)

    [payload] = asyncio.run(stored())
    assert payload.metadata["encoding"] == ENCODING and b"4111" not in payload.data
    assert secret.encode() in decrypt(payload, bundle_keys(cluster.bundle)).data


def test_the_same_worker_in_a_namespace_no_binding_names_is_refused(kube, kube_node, kube_wi, installed_wi,
                                                                    kube_key_service):
    name, doc, _ = run_worker(kube, kube_node, kube_wi, example_worker(kube_wi, installed_wi, kube_key_service),
                              "elsewhere", POD_WORKER)
    logs = kube.kubectl("logs", name, "-n", "elsewhere").stdout
    assert doc["status"]["phase"] == "Failed", (doc["status"], logs)
    assert doc["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3, logs
    assert "exchange refused:" in logs and "exchanged:" not in logs


# What the export's example worker pod runs in the next test, with nothing changed in what it is
# exported with: the exchange and the key service at the URLs it names (Services' namespaced
# names, resolved by the cluster DNS, routed by kube-proxy), the projected token, the role Secret.
# It prints what the names resolved to, the exchanged token's subject and groups, one payload
# encrypted with the ring it fetched (ciphertext) and what the key service says to another ring.
POD_KEYS = POD_PRELUDE + '''\
import socket
from urllib.parse import urlsplit

for variable in ("TEMPORAL_EXCHANGE_URL", "TEMPORAL_KEY_SERVICE_URL"):
    print("resolved:", variable, socket.gethostbyname(urlsplit(os.environ[variable]).hostname), flush=True)
identity = WorkloadIdentity(os.environ["TEMPORAL_EXCHANGE_URL"], token_file=os.environ["TEMPORAL_TOKEN_FILE"],
                            ca_file="/bundle/trust/ca.pem")
exchanged = claims(identity.exchange().token)
print("exchanged:", json.dumps({"sub": exchanged["sub"], "groups": exchanged.get("groups")}), flush=True)
keys = KeyServiceKeys.for_workload(os.environ["TEMPORAL_KEY_SERVICE_URL"], bundle_dir="/bundle", identity=identity,
                                   server_name=os.environ["TEMPORAL_KEY_SERVICE_SERVER_NAME"])
namespace = os.environ["TEMPORAL_NAMESPACE"]
[payload] = asyncio.run(data_converter(keys, namespace=namespace).encode(["card 4111 " + os.environ["HOSTNAME"]]))
print("encrypted:", base64.b64encode(payload.SerializeToString()).decode(), flush=True)
try:
    keys.ring(os.environ["OTHER_NAMESPACE"])
    print("other ring: given", flush=True)
except KeyServiceError as exc:
    print("other ring:", exc, flush=True)
'''


def _exported_worker_in(kube, kube_node, installed_wi, namespace: str) -> tuple[dict, dict]:
    """The export's example worker pod, in that Kubernetes namespace (bound by default_bindings to
    the Temporal namespace of its name), with its role Secret copied there as its comment says;
    only the image, the command (POD_KEYS), the node's toleration and restartPolicy changed."""
    bundle, dest, _, _ = installed_wi
    exported = next(d for d in yaml.safe_load_all((dest / "examples" / "workload-identity-worker.yaml").read_text())
                    if d and d["kind"] == "Pod")
    pod = json.loads(json.dumps(exported))
    pod["metadata"].update(name=f"worker-{uuid.uuid4().hex[:6]}", namespace=namespace)
    spec, container = pod["spec"], pod["spec"]["containers"][0]
    container.update(image=kube_node.bundle_image, imagePullPolicy="Never", command=["python3", "/scripts/pod_keys.py"])
    for entry in container["env"]:
        if entry["name"] == "TEMPORAL_NAMESPACE":
            entry["value"] = namespace
    container["env"].append({"name": "OTHER_NAMESPACE", "value": "other"})
    container["volumeMounts"].append({"name": "scripts", "mountPath": "/scripts", "readOnly": True})
    spec["volumes"].append({"name": "scripts", "configMap": {"name": "pod-keys"}})
    spec.update(restartPolicy="Never", tolerations=[TOLERATION])
    secret = next(v["secret"] for v in spec["volumes"] if "secret" in v)
    kube.kubectl("create", "serviceaccount", spec["serviceAccountName"], "-n", namespace, check=False)
    kube.kubectl("create", "secret", "generic", secret["secretName"], "-n", namespace,
                 *[f"--from-file={item['key']}={bundle.root / item['path']}" for item in secret["items"]], check=False)
    kube.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "pod-keys", "namespace": namespace},
                "data": {"pod_keys.py": POD_KEYS}})
    kube.apply(pod)
    return exported, finished(kube, namespace, pod["metadata"]["name"])


def test_the_exported_worker_pod_gets_its_keys_from_the_exported_exchange_and_codec_server_in_the_cluster(
        kube, kube_node, installed_wi):
    """The JWKS server, the codec server (with its key service) and the token exchange run as the
    export's Deployments; the exchange reads the API server's JWKS at kubernetes.default.svc and
    asks it TokenReview from inside; the worker pod reaches them by their Services' names."""
    bundle, _, namespace, _ = installed_wi
    for deployment in (bundle.config.network.jwks_host, bundle.config.codec.host, bundle.config.workload_identity.host):
        run_exported_deployment(kube, namespace, deployment, kube_node.bundle_image)

    exported, doc = _exported_worker_in(kube, kube_node, installed_wi, "default")
    name = doc["metadata"]["name"]
    logs = kube.kubectl("logs", name, "-n", "default").stdout
    print(f"the pod's log:\n{logs[-3000:]}")  # shown when the test fails, whole
    assert doc["status"]["phase"] == "Succeeded", (doc["status"], logs)
    env = {e["name"]: e.get("value") for e in exported["spec"]["containers"][0]["env"]}
    for variable, service in (("TEMPORAL_EXCHANGE_URL", bundle.config.workload_identity.host),
                              ("TEMPORAL_KEY_SERVICE_URL", bundle.config.codec.host)):
        assert env[variable].startswith(f"https://{service}.{namespace}.svc:")  # as exported, unchanged
        ip = kube.kubectl("get", "service", service, "-n", namespace, "-o", "jsonpath={.spec.clusterIP}").stdout
        assert f"resolved: {variable} {ip}" in logs.splitlines(), logs  # the cluster DNS's answer: the Service
    exchanged = json.loads(re.search(r"^exchanged: (.*)$", logs, re.M).group(1))
    assert exchanged == {"sub": "cluster:system:serviceaccount:default:temporal-worker", "groups": ["default:write"]}
    other = re.search(r"^other ring: (.*)$", logs, re.M).group(1)
    assert "refused the data keys of namespace 'other' (403" in other, other
    # The ring it fetched is `default`'s: the bundle's own keys open what the pod encrypted.
    payload = Payload.FromString(base64.b64decode(re.search(r"^encrypted: (\S+)$", logs, re.M).group(1)))
    assert payload.metadata["encoding"] == ENCODING and b"4111" not in payload.data
    assert decrypt(payload, bundle_keys(bundle.root)).data == json.dumps(f"card 4111 {name}").encode()


def _secrets(kube, namespace: str) -> dict[str, dict[str, str]]:
    items = kube.get("secrets", "-n", namespace)["items"]
    return {item["metadata"]["name"]: item.get("data", {}) for item in items}


def test_the_exported_token_refresher_patches_fresh_tokens_into_exactly_its_secrets_from_inside_the_cluster(
        kube, kube_node, installed):
    """The token refresher as exported (its signing-key Secret, its service account's own token,
    the API server at kubernetes.default.svc): it mints every role's token into its empty work
    directory and patches each into that role's Secret; of all the namespace's Secrets only those
    its Role names change, and in them only the token; each new token verifies against the
    bundle's published keys with the role's permissions."""
    bundle, _, namespace, _ = installed
    release = bundle.config.kubernetes.release
    allowed = set(kube.get("role", f"{release}-token-refresher", "-n", namespace)["rules"][0]["resourceNames"])
    before = _secrets(kube, namespace)
    run_exported_deployment(kube, namespace, f"{release}-token-refresher", kube_node.bundle_image)

    def patched_all():
        logs = kube.kubectl("logs", f"deployment/{release}-token-refresher", "-n", namespace, check=False).stdout
        return set(re.findall(r"^updated Secret (\S+)$", logs, re.M)) == allowed and logs
    logs = wait_until(patched_all, timeout=120, what="the refresher's update of every Secret its Role names", interval=2)
    assert "error" not in logs.lower() and "403" not in logs, logs

    after = _secrets(kube, namespace)
    assert after.keys() == before.keys()
    changed = {name for name in after if after[name] != before[name]}
    assert changed == allowed, (changed, allowed)
    jwks = json.loads((bundle.root / "jwks" / "jwks.json").read_text())
    for role in bundle.config.roles:
        secret = next(name for name in allowed if name.endswith(f"-role-{role.name}"))
        key = f"{role.name}.jwt"
        assert {k for k in after[secret] if after[secret][k] != before[secret].get(k)} == {key}, secret
        claims = verify_token(base64.b64decode(after[secret][key]).decode().strip(), jwks,
                              audience=bundle.config.jwt.audience)
        assert sorted(claims["permissions"]) == sorted(role.permissions), (role.name, claims)
