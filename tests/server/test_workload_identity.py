"""Workload identity (Kubernetes service-account tokens exchanged for bundle tokens) against the
real Temporal server.

The subject tokens come from tests/support/kube_issuer.py: a STAND-IN for kube-apiserver that serves OIDC
discovery and the JWKS at kube-apiserver's paths, with its claims and RS256 keys. It is not a real
kube-apiserver: k8s.io/kubernetes is on the Go module proxy, but its go.mod replaces its staging
modules with local paths, so kube-apiserver cannot be built from the proxy (see README).

The token exchange runs as `python -m bootstrap serve-exchange`, the real temporal-server
(tests/support/cluster.py) trusts only the bundle's JWKS, in which the exchange's key is published.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from datetime import timedelta

import jwt
import pytest
from temporalio.worker import Worker

from bootstrap.client import connect_workload
from bootstrap.ops.plan import load_exchange_key
from bootstrap.store import Layout
from bootstrap.core.tokens import SigningKey
from bootstrap.core.workload_identity import GRANT_TYPE, JWT_TOKEN_TYPE
from tests.support.workflows import GreetingWorkflow, greet
from tests.support.workload import (denied, describe, exchange_url, post_exchange, project, raw_client,
                                    start_greeting, workload_cluster)


@pytest.fixture(scope="module")
def wi(tmp_path_factory):
    yield from workload_cluster(tmp_path_factory.mktemp("workload-identity"))


# --------------------------------------------------------------------------- the happy path and its bounds


def test_exchanged_token_runs_a_workflow_in_its_namespace_and_is_denied_another(wi, tmp_path):
    token_file = project(wi, tmp_path, namespace="default", account="orders-worker")

    async def scenario():
        client, refresher = await connect_workload(wi.address, exchange_url=exchange_url(wi), bundle_dir=wi.bundle,
                                                   token_file=token_file, namespace="default", server_name="localhost")
        header, claims = jwt.get_unverified_header(client.api_key), jwt.decode(client.api_key, options={"verify_signature": False})
        queue = f"wi-{uuid.uuid4().hex[:8]}"
        async with Worker(client, task_queue=queue, workflows=[GreetingWorkflow], activities=[greet]):
            result = await start_greeting(client, queue)
        other = await raw_client(wi, client.api_key, namespace="other")
        with pytest.raises(BaseException) as refused:
            await describe(other, "other")
        return header, claims, result, refused.value

    header, claims, result, refused = asyncio.run(scenario())
    assert result == "hello, pod"
    layout = Layout(wi.bundle)
    exchange_kid = load_exchange_key(layout).kid
    assert header["kid"] == exchange_kid != (wi.bundle / "private/jwt/active").read_text().strip()
    assert exchange_kid in {k["kid"] for k in json.loads(layout.jwks.read_text())["keys"]}
    assert claims["groups"] == ["default:write"]
    assert claims["sub"] == "cluster:system:serviceaccount:default:orders-worker"
    assert claims["exp"] - claims["iat"] <= 300
    assert denied(refused), refused


REFUSED_SUBJECTS = {
    # name -> (token kwargs, the exchange's error_description must contain)
    "wrong-audience": (dict(audience="https://kubernetes.default.svc"), "audience"),
    "expired": (dict(lifetime=-120), "expired"),
    "unknown-issuer": (dict(issuer="https://evil.example:6443"), "issuer this exchange does not trust"),
    "unknown-key": (dict(key=SigningKey.generate("RS256")), "unknown kid"),
    "not-bound-to-a-pod": (dict(bound_pod=False), "not bound to a pod"),
    "unbound-namespace": (dict(namespace="kube-system", account="default"), "no binding"),
}


@pytest.mark.parametrize("kwargs,fragment", REFUSED_SUBJECTS.values(), ids=REFUSED_SUBJECTS.keys())
def test_exchange_refuses(wi, kwargs, fragment):
    status, doc = post_exchange(wi, wi.issuer.service_account_token(**kwargs))
    assert (status, doc["error"]) == (400, "invalid_request"), doc
    assert fragment.lower() in doc["error_description"].lower(), doc
    assert "access_token" not in doc


def test_a_deleted_pods_token_is_refused_once_the_cluster_says_so(wi):
    """Signature and expiry still hold for a deleted pod's token: only the API server's TokenReview
    knows, and the exchange asks it for every kubernetes token; with TokenReview down it refuses."""
    token = wi.issuer.service_account_token(account="short-lived")
    pod = jwt.decode(token, options={"verify_signature": False})["kubernetes.io"]["pod"]["name"]
    assert post_exchange(wi, token)[0] == 200
    wi.issuer.review_unavailable = True
    try:
        status, doc = post_exchange(wi, token)
    finally:
        wi.issuer.review_unavailable = False
    assert (status, doc["error"]) == (503, "temporarily_unavailable"), doc
    wi.issuer.deleted_pods.add(pod)
    try:
        status, doc = post_exchange(wi, token)
    finally:
        wi.issuer.deleted_pods.discard(pod)
    assert (status, doc["error"]) == (400, "invalid_request") and "no longer accepts" in doc["error_description"], doc


def test_exchange_protocol_errors(wi):
    good = wi.issuer.service_account_token()
    assert post_exchange(wi, good, grant_type="client_credentials")[1]["error"] == "unsupported_grant_type"
    assert post_exchange(wi, good, subject_token_type="urn:ietf:params:oauth:token-type:saml2")[0] == 400
    assert post_exchange(wi, good, audience="someone-else")[1]["error"] == "invalid_target"
    status, doc = post_exchange(wi, good, audience="temporal")
    assert status == 200 and doc["token_type"] == "Bearer" and doc["issued_token_type"] == JWT_TOKEN_TYPE


def test_the_subject_token_itself_opens_nothing_at_the_server(wi):
    """An attacker holding a pod's service-account token cannot skip the exchange: the server trusts
    the bundle's JWKS only."""
    async def scenario():
        client = await raw_client(wi, wi.issuer.service_account_token())
        await describe(client, "default")

    with pytest.raises(BaseException) as refused:
        asyncio.run(scenario())
    assert denied(refused.value), refused.value


def test_exchanged_token_never_outlives_the_subject_and_is_refused_when_replayed_after(wi):
    status, doc = post_exchange(wi, wi.issuer.service_account_token(lifetime=6))
    assert status == 200 and doc["expires_in"] <= 6
    token = doc["access_token"]
    expires = jwt.decode(token, options={"verify_signature": False})["exp"]

    async def use():
        await describe(await raw_client(wi, token), "default")

    asyncio.run(use())  # valid now
    time.sleep(max(0.0, expires - time.time()) + 2)
    with pytest.raises(BaseException) as refused:
        asyncio.run(use())  # the same token, replayed after its expiry
    assert denied(refused.value), refused.value


# --------------------------------------------------------------------------- rotation of the projected token


def test_worker_keeps_running_across_subject_token_rotations(wi, tmp_path):
    """The kubelet rewrites the projected token at 80% of its lifetime; here every 8 s for a 10 s
    token, five times. Exchanged tokens live at most as long as the subject, so the refresher must
    re-read the file and exchange again each time. Every call during that must succeed."""
    lifetime, rotations = 10, 5
    token_file, issued = project(wi, tmp_path, lifetime=lifetime), [time.time()]

    async def kubelet():
        """Rewrites the token file at 80% of each token's lifetime, counted from its issue."""
        for _ in range(rotations):
            await asyncio.sleep(lifetime * 0.8 - (time.time() - issued[-1]))
            issued.append(time.time())
            wi.issuer.project(token_file, wi.issuer.service_account_token(lifetime=lifetime))

    async def scenario():
        client, refresher = await connect_workload(wi.address, exchange_url=exchange_url(wi), bundle_dir=wi.bundle,
                                                   token_file=token_file, namespace="default", server_name="localhost")
        refreshing, rotating = asyncio.create_task(refresher.run()), asyncio.create_task(kubelet())
        queue = f"wi-rot-{uuid.uuid4().hex[:8]}"
        calls, failures, seen_tokens = 0, [], {client.api_key}
        async with Worker(client, task_queue=queue, workflows=[GreetingWorkflow], activities=[greet]):
            while not rotating.done() or time.time() < issued[-1] + lifetime * 0.5:
                try:
                    assert await start_greeting(client, queue) == "hello, pod"
                except Exception as exc:  # noqa: BLE001 (every failure is counted, none hidden)
                    failures.append(repr(exc))
                calls += 1
                seen_tokens.add(client.api_key)
                await asyncio.sleep(0.2)
        await rotating
        refreshing.cancel()
        return calls, failures, len(seen_tokens), refresher

    calls, failures, distinct, refresher = asyncio.run(scenario())
    print(f"\nrotation: {calls} workflows, {len(failures)} failed, {distinct} exchanged tokens, "
          f"{refresher.exchanges} exchanges, {refresher.failures} failed exchanges")
    assert failures == []
    assert refresher.failures == 0, refresher.last_error
    assert calls >= rotations * 5
    assert distinct >= rotations + 1  # a new exchanged token after every rotation at least


# --------------------------------------------------------------------------- the listener, attacked


def test_exchange_listener_attack_matrix(wi, tmp_path):
    """The token exchange's entry in bootstrap.core.security_model.LISTENERS, attacked with every
    certificate the bundle issues plus a foreign CA's, expired ones and none: TLS admits exactly
    what the entry says, and whoever is admitted still gets no token for a forged subject token
    (a foreign key claiming the cluster key's kid) or none at all."""
    from bootstrap.core.security_model import LISTENERS
    from tests.support.trust_domains import client_context, credentials, expected, probe_tls

    listeners = [l for l in LISTENERS if l.service == "token-exchange"]
    assert len(listeners) == 1 and listeners[0].port_number(None) == 8444
    forged = wi.issuer.service_account_token(key=SigningKey.generate("RS256"))
    real_kid = wi.issuer.keys[0].kid
    forged = jwt.encode(jwt.decode(forged, options={"verify_signature": False}), SigningKey.generate("RS256").private_key,
                        algorithm="RS256", headers={"kid": real_kid})
    cafile = wi.bundle / "trust" / "ca.pem"
    tried, wrong = 0, []
    for cred in credentials(wi, tmp_path):
        for listener in listeners:
            got = probe_tls(wi.exchange_port, "localhost", client_context(cafile, cred))
            tried += 1
            if got != expected(listener, cred):
                wrong.append(f"{listener.name} x {cred.name}: {got}")
        ctx = ssl.create_default_context(cafile=str(cafile))
        if cred.cert:
            ctx.load_cert_chain(str(cred.cert), str(cred.key))
        for subject in (forged, ""):
            form = urllib.parse.urlencode({"grant_type": GRANT_TYPE, "subject_token": subject,
                                           "subject_token_type": JWT_TOKEN_TYPE}).encode()
            request = urllib.request.Request(exchange_url(wi), data=form,
                                             headers={"Content-Type": "application/x-www-form-urlencoded"})
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, context=ctx, timeout=10)
            doc = json.loads(refused.value.read())
            if refused.value.code != 400 or "access_token" in doc:
                wrong.append(f"exchange x {cred.name}: {refused.value.code} {doc}")
    print(f"\ntoken exchange attack matrix: {tried} TLS pairs, {len(wrong)} wrong")
    assert tried >= 15
    assert not wrong, "\n".join(wrong)


def test_exchange_http_hardening(wi):
    """Bounded, strict form handling: what the codec and JWKS servers promise, here too."""
    import http.client

    def call(method, path, body=None, headers=None):
        ctx = ssl.create_default_context(cafile=str(wi.bundle / "trust" / "ca.pem"))
        conn = http.client.HTTPSConnection("localhost", wi.exchange_port, context=ctx, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {}, encode_chunked=not isinstance(body, (str, type(None))))
            response = conn.getresponse()
            return response.status, response.getheader("Cache-Control"), json.loads(response.read() or b"{}")
        finally:
            conn.close()

    form = {"Content-Type": "application/x-www-form-urlencoded"}
    good = urllib.parse.urlencode({"grant_type": GRANT_TYPE, "subject_token": wi.issuer.service_account_token(),
                                   "subject_token_type": JWT_TOKEN_TYPE})
    assert call("GET", "/token")[0] == 405
    assert call("GET", "/jwks.json")[0] == 404
    assert call("POST", "/token", good, {"Content-Type": "application/json"})[2]["error"] == "invalid_request"
    assert call("POST", "/token", good + "&grant_type=x", form)[2]["error_description"] == "a parameter is repeated"
    assert call("POST", "/token", "a" * (17 * 1024), form)[0] == 413
    assert call("POST", "/token", iter([good.encode()]), {**form, "Transfer-Encoding": "chunked"})[0] == 411
    status, cache, doc = call("POST", "/token", good, form)
    assert (status, cache) == (200, "no-store") and doc["access_token"]


# --------------------------------------------------------------------------- rotation of the exchange's key


@pytest.fixture(scope="module")
def fast_wi(tmp_path_factory):
    """Short intervals so the whole rotation fits in a test: the server refetches the JWKS every
    2 s; exchanged tokens live 1 min (the shortest workload_identity allows), refreshed at 30 s."""
    yield from workload_cluster(tmp_path_factory.mktemp("exchange-rotation"), exchange_lifetime="1m",
                                namespaces=("default",), jwks_refresh="2s")


async def rotate_exchange_key(cluster) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bootstrap", "rotate", "--config", str(cluster.config_path), "--out", str(cluster.bundle),
        "--kind", "exchange-key", "--wait", "--probe-address", cluster.address, "--server-name", "localhost",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 240)
    assert process.returncode == 0, err.decode()
    return out.decode()


def test_worker_keeps_running_while_the_exchange_key_rotates(fast_wi, tmp_path):
    """`rotate --kind exchange-key --wait` through all three phases while a worker runs on exchanged
    tokens: the running exchange picks up the new key without a restart, every call succeeds,
    the worker moves from the old kid to the new one, and afterwards a token signed by the
    retired key is refused by the server."""
    cluster, layout = fast_wi, Layout(fast_wi.bundle)
    old_key = load_exchange_key(layout)
    token_file = project(cluster, tmp_path, namespace="default", account="orders-worker", lifetime=3600)

    async def scenario():
        client, refresher = await connect_workload(cluster.address, exchange_url=exchange_url(cluster),
                                                   bundle_dir=cluster.bundle, token_file=token_file,
                                                   namespace="default", server_name="localhost")
        refreshing = asyncio.create_task(refresher.run())
        rotating = asyncio.create_task(rotate_exchange_key(cluster))
        queue = f"wi-xrot-{uuid.uuid4().hex[:8]}"
        calls, failures, kids, settle = 0, [], [], None
        async with Worker(client, task_queue=queue, workflows=[GreetingWorkflow], activities=[greet]):
            # On until the rotation is done, then 3 JWKS refreshes more: the server has dropped
            # the old key by then, and the worker must not notice.
            while settle is None or time.monotonic() < settle:
                try:
                    assert await start_greeting(client, queue) == "hello, pod"
                except Exception as exc:  # noqa: BLE001 (every failure is counted, none hidden)
                    failures.append(repr(exc))
                calls += 1
                kid = jwt.get_unverified_header(client.api_key)["kid"]
                if not kids or kids[-1] != kid:
                    kids.append(kid)
                if settle is None and rotating.done():
                    settle = time.monotonic() + 6
                await asyncio.sleep(0.2)
        refreshing.cancel()
        return await rotating, calls, failures, kids, refresher

    log, calls, failures, kids, refresher = asyncio.run(scenario())
    new_kid = load_exchange_key(layout).kid
    print(f"\nexchange-key rotation: {calls} workflows, {len(failures)} failed, kids {kids}, "
          f"{refresher.exchanges} exchanges, {refresher.failures} failed exchanges")
    assert failures == []
    assert refresher.failures == 0, refresher.last_error
    assert "phase published" in log and "the exchange now signs with" in log and f"retired {old_key.kid}" in log
    assert new_kid != old_key.kid and kids == [old_key.kid, new_kid]
    assert calls >= 50
    published = {k["kid"] for k in json.loads(layout.jwks.read_text())["keys"]}
    assert new_kid in published and old_key.kid not in published
    assert not layout.exchange_keys.exists() or not any(layout.exchange_keys.iterdir())
    ctx = ssl.create_default_context(cafile=str(cluster.bundle / "trust" / "ca.pem"))
    health = json.loads(urllib.request.urlopen(f"https://localhost:{cluster.exchange_port}/healthz", context=ctx).read())
    assert health["kid"] == new_kid  # the same process, now signing with the new key
    assert '"event":"signing-key-reloaded"' in cluster.exchange_log.read_text()

    # The attacker's side: whoever kept the retired key cannot sign their way in any more, while
    # the very same claims signed by the new key still open the namespace.
    from bootstrap.core.config import load_config
    from bootstrap.core.tokens import mint_token

    jwt_config = load_config(cluster.config_path).jwt

    def signed_by(key):
        return mint_token(key, role="workload", permissions=["default:write"], issuer=jwt_config.issuer,
                          audience=jwt_config.audience, lifetime=timedelta(minutes=1),
                          subject="cluster:system:serviceaccount:default:orders-worker").encoded

    async def use(token):
        await describe(await raw_client(cluster, token), "default")

    asyncio.run(use(signed_by(load_exchange_key(layout))))
    with pytest.raises(BaseException) as refused:
        asyncio.run(use(signed_by(old_key)))
    assert denied(refused.value), refused.value
