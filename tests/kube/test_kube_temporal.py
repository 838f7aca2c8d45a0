"""Temporal itself in the kube tier's cluster (tests/support/kube_temporal.py): PostgreSQL with
TLS and certificate auth, the schema, the five server services from the exported values' server
config and Secrets, the export's JWKS server, Dex, codec server and UI gate as exported. On it:
the export's registration Job registers the namespaces through the frontend's Service and
records the cluster info in its one ConfigMap; every replica of each server service joins its
ring, and a history replica lost mid-workflow hands its shards over; a worker pod with nothing
but its role's exported Secret runs a workflow through the frontend's Service and is refused what
its role does not grant; the export's verify Job passes from inside, the NetworkPolicies
enforced, and in a pod wearing a server's labels is refused by internode mTLS; the UI gate
answers a namespace-only user, and so does the Web UI's own pod from the chart's web values."""

from __future__ import annotations

import asyncio
import json
import secrets
import urllib.error
import urllib.request
import uuid
import warnings

import bcrypt
import pytest
import yaml
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest, GetClusterInfoRequest, ListNamespacesRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode, TLSConfig

from bootstrap.client import connect
from bootstrap.ops.export_helm.names import names
from tests.support.bundles import make_bundle
from tests.support.chart import SERVER_SERVICES
from tests.support.dex import Dex
from tests.support.exports import export
from tests.support.kube_node import TOLERATION
from tests.support.kube_pods import POD_PRELUDE, finished, rolled_out, run_exported_deployment
from tests.support.kube_temporal import (
    RELEASE,
    RESTRICTED_CONTAINER,
    chart_labels,
    holds_an_api_token,
    postgres,
    restricted_pod_security,
    schema_job,
    server,
    web,
)
from tests.support.membership import rings
from tests.support.upgrade_client import SleepWorkflow
from tests.support.upgrade_client import worker as sleep_worker
from tests.support.waits import HarnessError, wait_until

NAMESPACE = "temporal-run"
# A person who may read `default` and nothing else, a user of the bundle's Dex.
READER_PASSWORD = secrets.token_urlsafe(12)
READER_HASH = bcrypt.hashpw(READER_PASSWORD.encode(), bcrypt.gensalt(10)).decode()
# Two replicas of each request-serving service (one system worker: two cores), and Dex's issuer
# under a name the pods resolve: the frontend takes Dex's keys as a key source and swaps in fetched
# keys only when every source answers.
REPLICAS = {"frontend": 2, "internal-frontend": 2, "history": 2, "matching": 2, "worker": 1}
CONFIG = f"""\
namespaces: [{{name: default}}, {{name: other}}]
persistence: {{num_history_shards: 4}}
oidc:
  host: dex.{NAMESPACE}.svc
  groups: {{admins: ["temporal-system:admin"], default-readers: ["default:read"]}}
  users: [{{username: reader, email: reader@example.com, groups: [default-readers], password_hash: "{READER_HASH}"}}]
kubernetes:
  namespace: {NAMESPACE}
  replicas: {json.dumps(REPLICAS)}
"""

# The worker pod's script: the bundle's own connect() with the role Secret's files, a workflow in
# `default` through the frontend's Service, then a call its role does not grant.
POD_ROLE_WORKER = POD_PRELUDE + '''\
from temporalio.api.workflowservice.v1 import RegisterNamespaceRequest
from temporalio.service import RPCError

from bootstrap.client import connect


async def main():
    address = os.environ["TEMPORAL_ADDRESS"]
    client = await connect(address, bundle_dir="/bundle", role="worker", namespace="default", server_name="temporal")
    queue = "pod-" + uuid.uuid4().hex[:8]
    async with Worker(client, task_queue=queue, workflows=[PodGreeting], activities=[greet],
                      workflow_runner=UnsandboxedWorkflowRunner()):
        result = await client.execute_workflow(PodGreeting.run, os.environ["HOSTNAME"], id="pod-" + uuid.uuid4().hex,
                                               task_queue=queue, execution_timeout=timedelta(seconds=60))
    print("workflow result:", result, flush=True)
    try:
        await client.workflow_service.register_namespace(RegisterNamespaceRequest(namespace="worker-made"))
        print("register namespace: allowed", flush=True)
    except RPCError as exc:
        print("register namespace:", exc.status.name, flush=True)


asyncio.run(main())
sys.stdout.flush()
os._exit(0)  # not the interpreter's shutdown, which the SDK's threads can crash after all went well
'''


def _manifests(dest) -> list[dict]:
    docs = []
    for path in sorted((dest / "manifests").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _job_on_the_node(job: dict, image: str) -> dict:
    """An exported Job with only its image a local one and the node's taint tolerated (a Job's pod
    template cannot be patched once created, so it is applied changed)."""
    job = json.loads(json.dumps(job))
    spec = job["spec"]["template"]["spec"]
    spec["tolerations"] = [TOLERATION]
    for container in spec["containers"]:
        container.update(image=image, imagePullPolicy="Never")
    return job


def _finished(kube, job: str, timeout: float = 600) -> tuple[dict, str]:
    """The Job's status once it completed or failed for good (a failed pod it retries is not the
    end), and its log."""
    def done():
        status = kube.get("job", job, "-n", NAMESPACE).get("status", {})
        ended = any(c["type"] in ("Complete", "Failed") and c["status"] == "True" for c in status.get("conditions", []))
        return status if ended else None
    status = wait_until(done, timeout, f"job {job} to finish", interval=2)
    return status, _job_log(kube, job)


def _job_log(kube, job: str) -> str:
    """The Job's log: with restartPolicy OnFailure a failed attempt restarts the container in the
    same pod, so the attempt before the last one (if any) comes first, marked."""
    def log(*previous: str) -> str:
        return kube.kubectl("logs", f"job/{job}", "-n", NAMESPACE, *previous, check=False, timeout=60).stdout
    before = log("--previous")
    return (f"--- the attempt before the last one:\n{before}--- the last attempt:\n" if before else "") + log()


def _completed(kube, job: str, timeout: int = 300) -> str:
    """The Job's log once it succeeded; its pods and log in the error when it failed."""
    status, logs = _finished(kube, job, timeout)
    if not status.get("succeeded"):
        pods = kube.kubectl("get", "pods", "-n", NAMESPACE, "-o", "wide", check=False).stdout
        raise HarnessError(f"job {job} did not complete: {status}\n{pods}\n{logs[-6000:]}")
    return logs


def _server_logs(kube) -> str:
    """The server services' last warnings and errors (each line cut at 300 characters)."""
    shown = []
    for service in SERVER_SERVICES:
        logs = kube.kubectl("logs", f"deployment/{RELEASE}-{service}", "-n", NAMESPACE, "--tail=400", check=False).stdout
        lines = [line[:300] for line in logs.splitlines() if '"level":"warn"' in line or '"level":"error"' in line]
        shown.append(f"--- {service}, last warnings and errors:\n" + "\n".join(lines[-15:]))
    return "\n".join(shown)


class Installed:
    def __init__(self, bundle, manifests: list[dict], values: dict, register_log: str):
        self.bundle, self.manifests, self.values, self.register_log = bundle, manifests, values, register_log


@pytest.fixture(scope="module")
def temporal(kube, kube_node, tmp_path_factory):
    """The export applied (its Jobs held back), PostgreSQL and the schema, JWKS and Dex as exported,
    the five server services, then the registration Job."""
    bundle = make_bundle(tmp_path_factory.mktemp("kube-temporal-bundle"), CONFIG)
    dest = tmp_path_factory.mktemp("kube-temporal-export") / "out"
    result = export(bundle, dest)
    assert result.code == 0, result.err
    images, exported = kube_node.image, names(bundle.config)
    assert bundle.config.kubernetes.release == RELEASE
    kube.kubectl("apply", "-f", str(dest / "namespace.yaml"))  # every pod below runs under its Pod Security
    kube.kubectl("apply", "-f", str(dest / "secrets"))
    manifests = _manifests(dest)
    kube.apply(yaml.safe_dump_all([d for d in manifests if d["kind"] != "Job"]))

    kube.apply(yaml.safe_dump_all(postgres(NAMESPACE, images["POSTGRES_IMAGE"], exported["postgres"])))
    rolled_out(kube, NAMESPACE, "postgresql")
    kube.apply(yaml.safe_dump_all(schema_job(NAMESPACE, images["TEMPORAL_ADMINTOOLS_IMAGE"], exported["database"])))
    print(_completed(kube, "temporal-schema"))
    run_exported_deployment(kube, NAMESPACE, bundle.config.network.jwks_host, images["BUNDLE_IMAGE"])
    run_exported_deployment(kube, NAMESPACE, "dex", images["DEX_IMAGE"])

    values = yaml.safe_load((dest / "values.yaml").read_text())
    kube.apply(yaml.safe_dump_all(server(values, NAMESPACE, images["TEMPORAL_SERVER_IMAGE"])))
    for service in SERVER_SERVICES:
        rolled_out(kube, NAMESPACE, f"{RELEASE}-{service}", timeout=240)

    register = next(d for d in manifests if d["kind"] == "Job" and "register" in d["metadata"]["name"])
    kube.apply(_job_on_the_node(register, images["BUNDLE_IMAGE"]))
    installed = Installed(bundle, manifests, values, _completed(kube, register["metadata"]["name"], timeout=420))
    # What the verify Job dials besides the server: the codec server, and the UI gate, which reads
    # the cluster info the registration Job recorded.
    for deployment in (bundle.config.codec.host, "ui-gate"):
        run_exported_deployment(kube, NAMESPACE, deployment, images["BUNDLE_IMAGE"])
    return installed


def test_the_server_and_web_pods_hold_no_api_token_and_the_registration_job_does(kube, temporal):
    """Every pod of the chart runs as the exported account that mounts no token (values.yaml's
    serviceAccount.name): none of the server or Web UI pods holds a token for the API server. The
    registration Job, which patches its ConfigMap, still mounts its own account's."""
    account = names(temporal.bundle.config)["chart_account"]
    assert kube.get("serviceaccount", account, "-n", NAMESPACE)["automountServiceAccountToken"] is False
    pods = kube.get("pods", "-n", NAMESPACE)["items"]
    chart = [p for p in pods if p["metadata"].get("labels", {}).get("app.kubernetes.io/name") == "temporal"]
    components = {p["metadata"]["labels"]["app.kubernetes.io/component"] for p in chart}
    assert {"frontend", "internal-frontend", "history", "matching", "worker"} <= components, components
    assert {p["spec"]["serviceAccountName"] for p in chart} == {account}
    assert [p["metadata"]["name"] for p in chart if holds_an_api_token(p)] == []
    registration = [p for p in pods if p["metadata"].get("labels", {}).get("job-name", "").endswith("register-namespaces")]
    assert registration and all(holds_an_api_token(p) for p in registration), [p["metadata"]["name"] for p in registration]


def test_the_registration_job_registers_the_namespaces_and_records_the_cluster_info_in_its_configmap(kube, temporal):
    """Its outcomes print once every namespace is usable: an attempt that failed after registering
    (the Job restarts it, as its restartPolicy says) leaves the next one to find them existing."""
    print(temporal.register_log)
    earlier, _, last = temporal.register_log.rpartition("--- the last attempt:\n")
    if earlier:  # the one-line error the earlier attempt ended with, in the CI log's warnings
        warnings.warn(f"the registration Job ran again; the attempt before ended: {earlier.strip().splitlines()[-1]}")
    for namespace in ("default", "other"):
        outcomes = [f"namespace {namespace}: registered"] + ([f"namespace {namespace}: exists"] if earlier else [])
        assert any(outcome in last for outcome in outcomes), temporal.register_log
    recorded = kube.get("configmap", names(temporal.bundle.config)["cluster_info"], "-n", NAMESPACE)["data"]
    info = json.loads(next(iter(recorded.values())))
    assert info["clusterName"] == temporal.bundle.config.cluster_name, info


def test_a_worker_pod_with_its_role_secret_runs_a_workflow_through_the_frontend_service(kube, kube_node, temporal):
    """The role Secret as exported, laid out as RoleCredentials reads a bundle (trust/, clients/,
    tokens/), the frontend at its Service's namespaced name: the workflow runs end to end on the
    cluster's history, matching and worker services, and registering a namespace (system only) is
    refused by the frontend's authorizer."""
    secret = f"{names(temporal.bundle.config)['role']}-worker"
    layout = {"ca.pem": "trust/ca.pem", "worker.pem": "clients/worker.pem", "worker.key": "clients/worker.key",
              "worker.jwt": "tokens/worker.jwt"}
    name = f"role-worker-{uuid.uuid4().hex[:6]}"
    kube.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "pod-role-worker", "namespace": NAMESPACE},
                "data": {"pod_role_worker.py": POD_ROLE_WORKER}})
    kube.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NAMESPACE}, "spec": {
        "restartPolicy": "Never", "tolerations": [TOLERATION],
        "securityContext": restricted_pod_security(10001),
        "containers": [{
            "name": "worker", "image": kube_node.bundle_image, "imagePullPolicy": "Never",
            "securityContext": RESTRICTED_CONTAINER,
            "command": ["python3", "/scripts/pod_role_worker.py"],
            "env": [{"name": "TEMPORAL_ADDRESS", "value": f"{RELEASE}-frontend.{NAMESPACE}.svc:7233"}],
            "volumeMounts": [{"name": "role", "mountPath": "/bundle", "readOnly": True},
                             {"name": "scripts", "mountPath": "/scripts", "readOnly": True}]}],
        "volumes": [{"name": "role", "secret": {"secretName": secret, "defaultMode": 0o440,
                                                "items": [{"key": k, "path": p} for k, p in layout.items()]}},
                    {"name": "scripts", "configMap": {"name": "pod-role-worker"}}]}})
    doc = finished(kube, NAMESPACE, name)
    logs = kube.kubectl("logs", name, "-n", NAMESPACE).stdout
    print(f"the pod's log:\n{logs[-3000:]}")
    if doc["status"]["phase"] != "Succeeded":
        print(_server_logs(kube))
    assert doc["status"]["phase"] == "Succeeded", (doc["status"], logs)
    assert f"workflow result: hello, {name}" in logs.splitlines()
    assert "register namespace: PERMISSION_DENIED" in logs.splitlines()


def _pods(kube, service: str) -> list[dict]:
    """The service's pods, by the chart's labels."""
    selector = ",".join(f"{k}={v}" for k, v in chart_labels(service).items())
    return kube.get("pods", "-n", NAMESPACE, "-l", selector)["items"]


def _pod_ips(kube, service: str) -> list[str]:
    pods = _pods(kube, service)
    return sorted(p["status"]["podIP"] for p in pods if p["status"].get("podIP") and p["status"]["phase"] == "Running"
                  and not p["metadata"].get("deletionTimestamp"))


def _rings_whole(kube, temporal) -> dict:
    """Once each frontend pod sees exactly every running pod of every service in that service's
    ring (by pod IP): what each one saw."""
    expected = {service: _pod_ips(kube, service) for service in SERVER_SERVICES}
    assert {s: len(ips) for s, ips in expected.items()} == REPLICAS, expected
    seen = {}

    def whole() -> bool:
        for ip in expected["frontend"]:
            seen[ip] = {role: sorted(member.rsplit(":", 1)[0] for member in members)
                        for role, members in rings(f"{ip}:7233", temporal.bundle.root, "temporal").items()}
            assert seen[ip] == expected, f"frontend {ip} sees {seen[ip]}, the pods are {expected}"
        return True

    wait_until(whole, 120, "each frontend to see every replica in its ring", interval=3)
    return seen


def test_every_replica_of_each_server_service_joins_its_ring_over_internode_tls(kube, temporal):
    """Two replicas of each request-serving service, as kubernetes.replicas exports them: each
    frontend pod, asked straight at its own IP with the system role (the admin API's
    DescribeCluster), sees every pod of every service in that service's ring, by pod IP. The
    pods found each other through the membership table and gossip over the membership port,
    which takes internode mutual TLS only: a ring short of a replica means those pods could
    not talk."""
    print(f"rings seen by each frontend pod: {_rings_whole(kube, temporal)}")


def test_a_history_replica_lost_mid_workflow_hands_over_its_shards_and_its_successor_joins_the_ring(kube, temporal):
    """16 workflows wait on 15 s timers, spread over the 4 history shards (all on one replica's
    two shards: a chance of 1 in 65536); one history pod is deleted while they wait. Every one
    completes: the other replica takes over the lost pod's shards, timers and all. The pod the
    Deployment starts in its place joins the ring, and each frontend again sees the whole cluster."""
    lost = _pods(kube, "history")[0]["metadata"]["name"]
    address = f"{_cluster_ip(kube, f'{RELEASE}-frontend')}:7233"

    async def sleepers_through_the_loss() -> list[str]:
        client = await connect(address, bundle_dir=temporal.bundle.root, role="worker", server_name="temporal")
        queue = f"replica-loss-{uuid.uuid4().hex[:8]}"
        async with sleep_worker(client, queue):
            handles = [await client.start_workflow(SleepWorkflow.run, 15, id=f"{queue}-{n}", task_queue=queue)
                       for n in range(16)]
            kube.kubectl("delete", "pod", lost, "-n", NAMESPACE, "--wait=false")
            return await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), 240)

    results = asyncio.run(sleepers_through_the_loss())
    assert results == ["slept 15s"] * 16, results
    kube.kubectl("wait", "--for=delete", f"pod/{lost}", "-n", NAMESPACE, "--timeout=120s", timeout=150)
    rolled_out(kube, NAMESPACE, f"{RELEASE}-history", timeout=240)
    print(f"after losing {lost}: rings seen by each frontend pod: {_rings_whole(kube, temporal)}")


def _verify_job(kube, kube_node, temporal, as_component: str | None = None) -> tuple[dict, dict]:
    """The export's verify Job run on the node with `--json` (its report, read here), changed only
    in image and toleration, or also wearing a server component's chart labels (a Job of its own
    name): its status once finished, and its report."""
    exported = next(d for d in temporal.manifests if d["kind"] == "Job" and d["metadata"]["name"].endswith("-verify"))
    job = _job_on_the_node(exported, kube_node.bundle_image)
    job["spec"]["template"]["spec"]["containers"][0]["args"].append("--json")
    if as_component:
        job["metadata"]["name"] += f"-as-{as_component}"
        job["spec"]["template"].setdefault("metadata", {}).setdefault("labels", {}).update(chart_labels(as_component))
    kube.apply(job)
    status, logs = _finished(kube, job["metadata"]["name"])
    return status, json.loads(logs[logs.index("{"):])


def test_the_exported_verify_job_passes_inside_the_cluster_with_its_network_policies_enforced(
        kube, kube_node, temporal):
    """The export's verify Job, changed only in image, toleration and `--json`, from inside the
    cluster, with 0 wrong pairs: the frontend's gRPC and HTTP API, the codec server and Dex admit
    and refuse every credential as the security model says, the token attacks are denied at the
    frontend, and every listener the exported NetworkPolicies close to other pods (history,
    matching, internal-frontend, each membership port, JWKS, the UI gate) is unreachable from the
    Job's pod, as kube-network-policies on the node enforces them. Temporal's own pods still reach
    each other there (the ring and workflow tests of this module), and the Web UI's pod the gate."""
    status, report = _verify_job(kube, kube_node, temporal)
    rows = report["rows"]
    closed = {r["listener"] for r in rows if r["expected"] == "unreachable"}
    print(f"the verify Job in the cluster: {report['pairs']} pairs, {report['wrong']} wrong; unreachable as "
          f"expected: {sorted(closed)}; not tried: {[s['listener'] for s in report['skipped']]}")
    assert report["wrong"] == 0 and status.get("succeeded"), [r for r in rows if not r["ok"]]
    assert {"history", "matching", "internal-frontend", "frontend membership", "JWKS", "UI gate (gRPC)"} <= closed, closed
    assert all(r["got"].startswith("unreachable") for r in rows if r["listener"] in closed), rows
    reached = {r["listener"] for r in rows if r["expected"] != "unreachable"}
    assert reached == {"frontend gRPC", "frontend gRPC, namespace default", "frontend HTTP API", "codec server",
                       "Dex (OIDC issuer)"}, reached
    tokens = {r["credential"].removeprefix("token: "): r["got"] for r in rows if r["credential"].startswith("token: ")}
    assert tokens.pop("valid") == "accepted" and tokens and all(g.startswith("denied") for g in tokens.values()), tokens


def test_a_pod_wearing_a_temporal_server_label_passes_the_policies_and_is_refused_by_internode_mtls(
        kube, kube_node, temporal):
    """An attacker who may create pods in the namespace can give one the labels the policies
    admit (here history's). The same verify Job in such a pod: no policy drops its connections any
    more but the UI gate's (Web UI pods only), and every Temporal listener refuses every
    credential it holds (internode mutual TLS); only the JWKS server, which serves public keys,
    admits it. (Its labels also put it behind history's headless Service, so its history pairs
    dial itself: connection refused, not a drop.) The frontend answers as before."""
    status, report = _verify_job(kube, kube_node, temporal, as_component="history")
    rows = report["rows"]
    closed = [r for r in rows if r["expected"] == "unreachable"]
    print("a pod labelled as history:", sorted({(r["listener"], r["got"].split(" (")[0][:40]) for r in closed}))
    assert status.get("failed") and not status.get("succeeded"), status
    dropped = {r["listener"] for r in closed if r["got"] == "unreachable: connect timed out"}
    assert dropped == {"UI gate (gRPC)"}, dropped
    admitted = {r["listener"] for r in closed if r["got"].startswith("admitted")}
    assert admitted == {"JWKS"}, admitted
    reached = [r for r in closed if r["listener"] != "JWKS" and not r["got"].startswith("unreachable")]
    assert {r["listener"] for r in reached} >= {"matching", "internal-frontend", "frontend membership",
                                                 "matching membership", "worker membership"}, reached
    assert all(r["got"].startswith("refused") for r in reached), reached


def _cluster_ip(kube, service: str) -> str:
    return kube.kubectl("get", "service", service, "-n", NAMESPACE, "-o", "jsonpath={.spec.clusterIP}").stdout


async def _as_reader(bundle, address: str, server_name: str, token: str) -> dict:
    """What a caller with the Web UI's client certificate and the reader's Dex token is answered."""
    tls = TLSConfig(server_root_ca_cert=(bundle / "trust/ca.pem").read_bytes(),
                    client_cert=(bundle / "ui/client.pem").read_bytes(),
                    client_private_key=(bundle / "ui/client.key").read_bytes(), domain=server_name)
    client = await Client.connect(address, namespace="default", api_key=token, tls=tls)
    service, answers = client.workflow_service, {}

    async def answer(name, call):
        try:
            answers[name] = await call
        except RPCError as exc:
            answers[name] = exc.status
    await answer("list", service.list_namespaces(ListNamespacesRequest()))
    await answer("cluster", service.get_cluster_info(GetClusterInfoRequest()))
    for namespace in ("default", "other"):
        await answer(namespace, service.describe_namespace(DescribeNamespaceRequest(namespace=namespace)))
    return answers


def test_the_ui_gate_answers_a_namespace_only_user_with_their_namespace_alone(kube, temporal, tmp_path):
    """The reader logs in at the cluster's Dex (the authorization-code flow, from this machine to
    Dex's Service) and calls as the Web UI would, with its client certificate: through the
    exported UI gate, which reads the cluster info the registration Job recorded and asks the
    frontend's Service with the reader's token, the namespace list holds `default` alone and the
    cluster info is answered; `other` is refused. Straight at the frontend the same two cluster
    reads are refused (the gate is what answers them)."""
    bundle = temporal.bundle.root
    dex = Dex.running_at(bundle, tmp_path, 5556, host=_cluster_ip(kube, "dex"))
    token = dex.login("reader@example.com", READER_PASSWORD, "local")["access_token"]

    gate = asyncio.run(_as_reader(bundle, f"{_cluster_ip(kube, 'ui-gate')}:7233", "ui-gate", token))
    assert [n.namespace_info.name for n in gate["list"].namespaces] == ["default"], gate["list"]
    assert gate["cluster"].cluster_name == temporal.bundle.config.cluster_name
    assert gate["default"].namespace_info.name == "default"
    assert gate["other"] == RPCStatusCode.PERMISSION_DENIED, gate["other"]

    frontend = asyncio.run(_as_reader(bundle, f"{_cluster_ip(kube, f'{RELEASE}-frontend')}:7233", "temporal", token))
    assert frontend["list"] == frontend["cluster"] == RPCStatusCode.PERMISSION_DENIED, frontend
    assert frontend["default"].namespace_info.name == "default" and frontend["other"] == RPCStatusCode.PERMISSION_DENIED


def _ui_api(base: str, path: str, tokens: dict | None) -> tuple[int, dict]:
    """A Web UI API call as the UI's pages make it once logged in (the tokens in the headers its
    auth middleware reads): the status and the JSON answer."""
    headers = {"Authorization": f"Bearer {tokens['access_token']}", "Authorization-Extras": tokens["id_token"]} if tokens else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(base + path, headers=headers), timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        return refused.code, {}


def test_the_web_ui_pod_from_the_exported_values_serves_a_namespace_only_user_through_the_gate(
        kube, kube_node, temporal, tmp_path):
    """The chart's web Deployment from the exported values (only image and toleration changed):
    the UI server starts with login at the cluster's Dex and the UI gate as its upstream over
    mutual TLS, and turns Ready. The reader's Dex tokens, sent to its API as its pages send them,
    list `default` alone and get the cluster info (both answered by the gate); a call without a
    token is refused by the UI server itself. No browser: the browser tests run on compose and
    the server tier."""
    kube.apply(yaml.safe_dump_all(web(temporal.values, NAMESPACE, kube_node.image["TEMPORAL_UI_IMAGE"])))
    rolled_out(kube, NAMESPACE, f"{RELEASE}-web", timeout=240)
    dex = Dex.running_at(temporal.bundle.root, tmp_path, 5556, host=_cluster_ip(kube, "dex"))
    tokens = dex.login("reader@example.com", READER_PASSWORD, "local")
    base = f"http://{_cluster_ip(kube, f'{RELEASE}-web')}:8080"

    def listed_by_the_ui():  # the UI server dials the gate on its first call
        status, answer = _ui_api(base, "/api/v1/namespaces", tokens)
        assert status == 200, (status, answer)
        return answer

    listed = wait_until(listed_by_the_ui, 60, "the Web UI to list the reader's namespaces", interval=2)
    assert [n["namespaceInfo"]["name"] for n in listed.get("namespaces", [])] == ["default"], listed
    status, info = _ui_api(base, "/api/v1/cluster-info", tokens)
    assert status == 200 and info.get("clusterName") == temporal.bundle.config.cluster_name, (status, info)
    assert _ui_api(base, "/api/v1/namespaces", None)[0] == 401
