"""The kubelet's own rotation of a worker pod's projected service-account token, under a steady
load: the export's example worker pod (tests/support/kube_pods.py) runs a workflow every
PAUSE_SECONDS, its payloads encrypted through the key service, for longer than its first token
lives. The kubelet requests a new token at 80 % of the lifetime (less up to 10 s of jitter) and
rewrites the file; the worker's exchange refresher and its key-service client read the file again
for each exchange. No call may fail.

600 s is the shortest lifetime the API server lets a projected token have, so the pod runs for
11 minutes, mostly waiting: tests/kube/conftest.py starts it with the kube tier, the other kube
modules run on the same node meanwhile, and tests/kube/test_kube_token_rotation.py reads its
outcome."""

from __future__ import annotations

from tests.support.kube_pods import POD_PRELUDE, example_worker, start_worker

ROTATION_NAMESPACE = "orders-team"
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




def start_rotation_pod(kube, kube_node, kube_wi, installed_wi, key_service: str) -> str:
    """The example worker pod with a TOKEN_SECONDS token and POD_ROTATION, started; its name."""
    example = example_worker(kube_wi, installed_wi, key_service)
    volume = next(v for v in example["spec"]["volumes"] if "projected" in v)
    volume["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"] = TOKEN_SECONDS
    example["spec"]["containers"][0]["env"].append({"name": "RUN_SECONDS", "value": str(RUN_SECONDS)})
    example["spec"]["containers"][0]["env"].append({"name": "PAUSE_SECONDS", "value": str(PAUSE_SECONDS)})
    return start_worker(kube, kube_node, kube_wi, example, ROTATION_NAMESPACE, POD_ROTATION, script_name="pod-rotation")
