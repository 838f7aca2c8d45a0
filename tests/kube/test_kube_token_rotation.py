"""The kubelet's own rotation of a worker pod's projected service-account token, under a steady
load: the export's example worker pod (tests/support/kube_pods.py) runs a workflow every
PAUSE_SECONDS, its payloads encrypted through the key service, for longer than its first token
lives. The kubelet requests a new token at 80 % of the lifetime (less up to 10 s of jitter) and
rewrites the file; the worker's exchange refresher and its key-service client read the file again
for each exchange. No call may fail.

600 s is the shortest lifetime the API server lets a projected token have, so this module runs
for about 12 minutes, mostly waiting: scripts/run-tests.sh runs the kube tier after the server
and rotation tiers, in their lane."""

from __future__ import annotations

import json
import re

import pytest

from tests.support.kube_pods import POD_PRELUDE, example_worker, run_worker

pytestmark = pytest.mark.timeout(1500)

TOKEN_SECONDS = 600  # the API server's minimum expirationSeconds for a projected token
# Past the first token's exp: by then the kubelet has rotated it (requested at 480 s, written at
# its next sync of the pod's volumes) and every exchange since has used the new one.
RUN_SECONDS = TOKEN_SECONDS + 60
# A steady trickle, not a flood: what is under test is the token's rotation on every call, and the
# module shares two cores with the docker tiers, whose stacks a saturating load starved.
PAUSE_SECONDS = 2
KUBELET_MAX_JITTER = 10

# What the worker container runs: its data converter on the key service (KeyServiceKeys.for_workload)
# and the client of connect_workload() with the refresher running; then workflows one after the
# other, PAUSE_SECONDS apart, until RUN_SECONDS have passed. It prints each projected token it
# sees (digest, iat, exp, never the token), each failed call, and a summary.
POD_ROTATION = POD_PRELUDE + '''\
async def main():
    started = time.monotonic()
    token_file, seen = os.environ["TEMPORAL_TOKEN_FILE"], set()

    def note_token():
        with open(token_file) as f:
            raw = f.read().strip()
        digest = hashlib.sha256(raw.encode()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            c = claims(raw)
            print("projected token:", json.dumps({"sha256": digest, "iat": c["iat"], "exp": c["exp"],
                                                  "seen_at": round(time.monotonic() - started, 1)}), flush=True)

    note_token()
    bundle, namespace = os.environ["BUNDLE_DIR"], os.environ["TEMPORAL_NAMESPACE"]
    identity = WorkloadIdentity(os.environ["TEMPORAL_EXCHANGE_URL"], token_file=token_file,
                                ca_file=os.path.join(bundle, "trust", "ca.pem"))
    keys = KeyServiceKeys.for_workload(os.environ["TEMPORAL_KEY_SERVICE_URL"], bundle_dir=bundle, identity=identity,
                                       server_name=os.environ["TEMPORAL_KEY_SERVICE_SERVER_NAME"])
    client, refresher = await connect_workload(
        os.environ["TEMPORAL_ADDRESS"], exchange_url=os.environ["TEMPORAL_EXCHANGE_URL"], bundle_dir=bundle,
        token_file=token_file, namespace=namespace, server_name="localhost",
        data_converter=data_converter(keys, namespace=namespace))
    refreshing = asyncio.create_task(refresher.run())
    queue = "rotation-" + uuid.uuid4().hex[:8]
    calls, failures, exchanged = 0, 0, {client.api_key}

    async def greeting():
        return await client.execute_workflow(PodGreeting.run, "pod", id="rotation-" + str(uuid.uuid4()),
                                             task_queue=queue, execution_timeout=timedelta(seconds=60))

    # Unsandboxed: the workflow is defined in this script's __main__, which the sandbox cannot re-import.
    async with Worker(client, task_queue=queue, workflows=[PodGreeting], activities=[greet],
                      workflow_runner=UnsandboxedWorkflowRunner()):
        for attempt in range(40):  # a just-registered namespace reaches the frontend cache within ~10 s
            try:
                await greeting()
                break
            except Exception as exc:
                if "not found" not in str(exc).lower() or attempt == 39:
                    raise
                await asyncio.sleep(0.5)
        while time.monotonic() - started < float(os.environ["RUN_SECONDS"]):
            try:
                assert await greeting() == "hello, pod"
            except Exception as exc:  # every failure is counted and shown, none hidden
                failures += 1
                print("failed:", type(exc).__name__, str(exc)[:300], flush=True)
            calls += 1
            exchanged.add(client.api_key)
            note_token()
            await asyncio.sleep(float(os.environ["PAUSE_SECONDS"]))
    refreshing.cancel()
    print("summary:", json.dumps({"calls": calls, "failed": failures, "exchanged_tokens": len(exchanged),
                                  "exchanges": refresher.exchanges, "exchange_failures": refresher.failures,
                                  "key_service_exchanges": keys.exchanges, "seconds": round(time.monotonic() - started)}),
          flush=True)


asyncio.run(main())
'''


def test_the_kubelets_rotation_of_the_projected_token_fails_no_call(kube, kube_node, kube_wi, installed_wi,
                                                                     kube_key_service):
    example = example_worker(kube_wi, installed_wi, kube_key_service)
    volume = next(v for v in example["spec"]["volumes"] if "projected" in v)
    volume["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"] = TOKEN_SECONDS
    example["spec"]["containers"][0]["env"].append({"name": "RUN_SECONDS", "value": str(RUN_SECONDS)})
    example["spec"]["containers"][0]["env"].append({"name": "PAUSE_SECONDS", "value": str(PAUSE_SECONDS)})

    name, doc, _ = run_worker(kube, kube_node, kube_wi, example, "orders-team", POD_ROTATION,
                              timeout=RUN_SECONDS + 300)
    logs = kube.kubectl("logs", name, "-n", "orders-team").stdout
    assert doc["status"]["phase"] == "Succeeded", (doc["status"], logs[-3000:])
    summary = json.loads(re.search(r"^summary: (.*)$", logs, re.M).group(1))
    print(f"\nkubelet rotation: {summary}")
    assert re.findall(r"^failed: .*$", logs, re.M) == []
    assert summary["failed"] == 0 and summary["exchange_failures"] == 0, summary
    assert summary["seconds"] >= RUN_SECONDS and summary["calls"] >= RUN_SECONDS // (2 * PAUSE_SECONDS), summary

    # The kubelet wrote a second token before the first expired, and the run went on past that expiry.
    tokens = [json.loads(t) for t in re.findall(r"^projected token: (.*)$", logs, re.M)]
    assert len(tokens) >= 2, tokens
    first, second = tokens[0], tokens[1]
    assert first["exp"] - first["iat"] == TOKEN_SECONDS and second["exp"] - second["iat"] == TOKEN_SECONDS
    # kubelet v1.37.2 (pkg/kubelet/token/token_manager.go) refreshes within 20 % of the lifetime of
    # the expiry, less a random jitter of up to 10 s.
    assert first["iat"] + 0.8 * TOKEN_SECONDS - KUBELET_MAX_JITTER <= second["iat"] < first["exp"], tokens
    assert second["seen_at"] < TOKEN_SECONDS - 10, tokens  # in the file before the first one ran out
    # New exchanges happened after the rotation, for the frontend and for the key service.
    assert summary["exchanged_tokens"] >= 3 and summary["key_service_exchanges"] >= 2, summary
