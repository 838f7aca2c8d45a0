"""Workload identity, the pure part: the policy in bundle.yaml (strict, one error, nothing written),
the subject-token check (iss, aud, exp, nbf, signature, kubernetes.io claims), the exchanged token
(short, never past the subject's exp) and the exchange key published in the bundle's JWKS."""

from __future__ import annotations

import json

import jwt
import pytest

from bootstrap.core.config import parse_config
from bootstrap.errors import BundleError
from bootstrap.core.pki import utcnow
from bootstrap.core.tokens import SigningKey, jwks_document, verify_token
from bootstrap.core.workload_identity import Refused, exchanged_token, permissions_for, verify_subject
from tests.support.bundles import make_bundle, run_main

ISSUER = "https://kubernetes.default.svc.cluster.local"
NS = "namespaces: [{name: orders}, {name: billing}]\n"
WI = ("workload_identity:\n  issuers:\n    - {name: cluster, issuer: '" + ISSUER + "', audience: temporal-service}\n")


def config(extra: str = ""):
    import yaml

    return parse_config(yaml.safe_load(NS + WI + extra))


@pytest.fixture(scope="module")
def cluster_key():
    return SigningKey.generate("RS256")


def sa_token(key, *, namespace="orders", account="worker", pod=True, aud="temporal-service", iss=ISSUER,
             lifetime=600, nbf_offset=0, drop=(), **extra):
    now = int(utcnow().timestamp())
    kube = {"namespace": namespace, "serviceaccount": {"name": account, "uid": "sa-uid"}}
    if pod:
        kube["pod"] = {"name": f"{account}-7d9f", "uid": "pod-uid"}
    claims = {"iss": iss, "aud": [aud], "sub": f"system:serviceaccount:{namespace}:{account}", "iat": now,
              "nbf": now + nbf_offset, "exp": now + lifetime, "kubernetes.io": kube, **extra}
    for name in drop:
        claims.pop(name)
    return jwt.encode(claims, key.private_key, algorithm=key.algorithm, headers={"kid": key.kid})


BAD_POLICIES = {
    "unknown-key": ("  bogus: 1\n", ["workload_identity", "unknown key 'bogus'"]),
    "unknown-issuer-key": (None, ["issuers[0]", "unknown key 'jwks'"]),
    "binding-to-missing-namespace": (
        "  bindings: [{namespace: shop, service_account: '*', permissions: ['shop:write']}]\n",
        ["bindings[0]", "'shop:write'", "not configured"]),
    "wildcard-grants-temporal-system": (
        "  bindings: [{namespace: 'ops-*', service_account: admin, permissions: ['temporal-system:admin']}]\n",
        ["bindings[0]", "wildcard", "temporal-system"]),
    "any-service-account-grants-temporal-system": (
        "  bindings: [{namespace: ops, service_account: '*', permissions: ['orders:write', 'temporal-system:read']}]\n",
        ["bindings[0]", "wildcard", "temporal-system"]),
    "binding-unknown-issuer": (
        "  bindings: [{issuer: ci, namespace: a, service_account: b, permissions: ['orders:write']}]\n",
        ["bindings[0]", "'ci'"]),
    "lifetime-too-long": ("  token_lifetime: 2h\n", ["token_lifetime", "1h"]),
    "worker-role-in-binding": (
        "  bindings: [{namespace: orders, service_account: w, permissions: ['orders:owner']}]\n", ["'orders:owner'"]),
}


TOKEN_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"
REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"


def issuer_with(**fields):
    import yaml

    entry = {"name": "cluster", "issuer": ISSUER, "audience": "temporal-service", **fields}
    return parse_config(yaml.safe_load(NS) | {"workload_identity": {"issuers": [entry]}}).workload_identity.issuers[0]


def test_token_review_is_on_wherever_the_exchange_has_a_credential_to_ask_with():
    assert issuer_with(auth_token_file=TOKEN_FILE).reviews_tokens
    assert issuer_with(auth_token_file=TOKEN_FILE).token_review_endpoint == ISSUER + REVIEWS
    in_cluster = issuer_with(auth_token_file=TOKEN_FILE, discovery_url="https://10.0.0.1:6443/.well-known/openid-configuration")
    assert in_cluster.token_review_endpoint == "https://10.0.0.1:6443" + REVIEWS
    named = issuer_with(auth_token_file=TOKEN_FILE, token_review_url="https://api.example:6443" + REVIEWS)
    assert named.token_review_endpoint == "https://api.example:6443" + REVIEWS
    assert not issuer_with().reviews_tokens
    assert not issuer_with(auth_token_file=TOKEN_FILE, token_review=False).reviews_tokens


@pytest.mark.parametrize("fields,fragment", [
    ({"token_review": True}, "token_review needs auth_token_file"),
    ({"token_review": "yes", "auth_token_file": TOKEN_FILE}, "token_review must be true or false"),
    ({"token_review": True, "type": "oidc", "auth_token_file": TOKEN_FILE}, "type: kubernetes only"),
    ({"token_review_url": "http://api" + REVIEWS, "auth_token_file": TOKEN_FILE}, "token_review_url"),
])
def test_a_token_review_setting_that_cannot_work_is_refused(fields, fragment):
    with pytest.raises(BundleError, match=fragment):
        issuer_with(**fields)


@pytest.mark.parametrize("extra,fragments", BAD_POLICIES.values(), ids=BAD_POLICIES.keys())
def test_bad_policy_is_one_error_and_nothing_written(extra, fragments, tmp_path):
    text = NS + (WI + extra if extra is not None else WI.replace("audience: temporal-service", "audience: a, jwks: x"))
    (tmp_path / "bundle.yaml").write_text(text)
    out = tmp_path / "bundle"
    run_main("init", "--config", tmp_path / "bundle.yaml", "--out", out).assert_one_error(*fragments)
    assert not out.exists()


def test_exact_identity_may_hold_temporal_system():
    cfg = config("  bindings: [{namespace: ops, service_account: admin, permissions: ['temporal-system:admin']}]\n")
    assert cfg.workload_identity.bindings[0].permissions == ("temporal-system:admin",)


def test_default_binds_kubernetes_namespace_to_its_temporal_namespace(cluster_key):
    cfg = config()
    policy, namespaces = cfg.workload_identity, ("orders", "billing")
    issuer = policy.issuers[0]
    jwks = jwks_document([cluster_key])
    identity = verify_subject(sa_token(cluster_key), issuer, jwks)
    assert (identity.namespace, identity.service_account) == ("orders", "worker")
    assert permissions_for(policy, identity, namespaces) == ("orders:write",)
    stranger = verify_subject(sa_token(cluster_key, namespace="default"), issuer, jwks)
    assert permissions_for(policy, stranger, namespaces) == ()


def test_placeholder_grants_only_configured_namespaces(cluster_key):
    cfg = config("  default_bindings: false\n"
                 "  bindings: [{namespace: '*', service_account: temporal-worker, permissions: ['{namespace}:write']}]\n")
    issuer, jwks = cfg.workload_identity.issuers[0], jwks_document([cluster_key])
    grant = lambda **kw: permissions_for(cfg.workload_identity, verify_subject(sa_token(cluster_key, **kw), issuer, jwks),
                                         ("orders", "billing"))
    assert grant(namespace="billing", account="temporal-worker") == ("billing:write",)
    assert grant(namespace="billing", account="other") == ()
    assert grant(namespace="kube-system", account="temporal-worker") == ()
    # A Kubernetes namespace called temporal-system is no Temporal namespace: nothing cluster-wide.
    assert grant(namespace="temporal-system", account="temporal-worker") == ()


SUBJECT_REFUSALS = {
    "wrong-audience": (dict(aud="kubernetes"), "(?i)audience"),
    "expired": (dict(lifetime=-120), "expired"),
    "not-yet-valid": (dict(nbf_offset=600, lifetime=1200), "not yet valid"),
    "wrong-issuer": (dict(iss="https://evil.example"), "issuer"),
    "no-pod-binding": (dict(pod=False), "not bound to a pod"),
    "no-nbf": (dict(drop=("nbf",)), "nbf"),
    "sub-mismatch": (dict(sub="system:serviceaccount:billing:worker"), "sub does not match"),
}


@pytest.mark.parametrize("kwargs,fragment", SUBJECT_REFUSALS.values(), ids=SUBJECT_REFUSALS.keys())
def test_subject_token_refusals(cluster_key, kwargs, fragment):
    issuer = config().workload_identity.issuers[0]
    with pytest.raises(Refused, match=fragment):
        verify_subject(sa_token(cluster_key, **kwargs), issuer, jwks_document([cluster_key]))


def test_unknown_key_refused(cluster_key):
    issuer = config().workload_identity.issuers[0]
    with pytest.raises(Refused, match="unknown kid"):
        verify_subject(sa_token(SigningKey.generate("RS256")), issuer, jwks_document([cluster_key]))


def test_exchanged_token_is_short_and_never_outlives_the_subject(cluster_key):
    cfg = config()
    issuer, exchange = cfg.workload_identity.issuers[0], SigningKey.generate("ES256")
    now = utcnow()
    for subject_left, expected in ((3600, 600), (90, 90)):
        identity = verify_subject(sa_token(cluster_key, lifetime=subject_left), issuer, jwks_document([cluster_key]))
        token = exchanged_token(exchange, identity, ("orders:write",), issuer=cfg.jwt.issuer, audience=cfg.jwt.audience,
                                lifetime=cfg.workload_identity.token_lifetime, now=now)
        assert token.claims["exp"] <= identity.claims["exp"]
        assert abs(token.claims["exp"] - token.claims["iat"] - expected) <= 2
        claims = verify_token(token.encoded, jwks_document([exchange]), audience="temporal")
        assert claims["groups"] == ["orders:write"] and claims["sub"] == "cluster:system:serviceaccount:orders:worker"


def test_init_publishes_the_exchange_key_beside_the_bundle_key(tmp_path):
    bundle = make_bundle(tmp_path / "b", NS + WI)
    exchange_key = SigningKey.from_pem(bundle.layout.exchange_signing_key.read_bytes())
    kids = {k["kid"] for k in bundle.jwks()["keys"]}
    active = bundle.layout.active_kid.read_text().strip()
    assert kids == {active, exchange_key.kid}
    assert oct(bundle.layout.exchange_signing_key.stat().st_mode & 0o777) == "0o600"
    assert (bundle.layout.root / "exchange" / "server.pem").exists()
    # A re-run keeps the key; a rotation of the bundle's key keeps publishing it.
    assert "exchange/signing.key: already exists, skipped" in bundle.run("init").out
    assert exchange_key.kid in {k["kid"] for k in json.loads(bundle.layout.jwks.read_text())["keys"]}


def test_disabled_by_default_no_exchange_key(tmp_path):
    bundle = make_bundle(tmp_path / "b", NS)
    assert not bundle.layout.exchange_signing_key.exists()
    assert len(bundle.jwks()["keys"]) == 1
    with pytest.raises(BundleError, match="no issuers"):
        parse_config({"workload_identity": {"enabled": True}})


def test_oidc_issuer_binds_by_subject(cluster_key):
    cfg = config("    - {name: ci, type: oidc, issuer: 'https://ci.example', audience: temporal}\n"
                 "  bindings: [{issuer: ci, subject: 'repo:acme/orders:*', permissions: ['orders:write']}]\n")
    ci = cfg.workload_identity.issuer_for("https://ci.example")
    now = int(utcnow().timestamp())
    def token(sub):
        claims = {"iss": ci.issuer, "aud": "temporal", "sub": sub, "iat": now, "exp": now + 300}
        return jwt.encode(claims, cluster_key.private_key, algorithm="RS256", headers={"kid": cluster_key.kid})
    jwks = jwks_document([cluster_key])
    grant = lambda sub: permissions_for(cfg.workload_identity, verify_subject(token(sub), ci, jwks), ("orders", "billing"))
    assert grant("repo:acme/orders:ref:refs/heads/main") == ("orders:write",)
    assert grant("repo:acme/billing:ref:refs/heads/main") == ()


def test_documented_example_policy_is_valid():
    from pathlib import Path

    import yaml

    page = (Path(__file__).resolve().parents[2] / "docs" / "workload-identity.md").read_text()
    block = page.split("```yaml\n", 1)[1].split("```", 1)[0]
    cfg = parse_config(yaml.safe_load("namespaces: [{name: orders}]\n" + block))
    assert [i.type for i in cfg.workload_identity.issuers] == ["kubernetes", "oidc"]


def test_signing_key_retirement_keeps_the_exchange_key_published(tmp_path):
    """The last phase of `rotate --kind signing-key` publishes the active key only: the exchange's
    key must stay, or every worker's token would be refused at the next JWKS refresh."""
    from bootstrap.ops.plan import active_signing_key, load_published_keys, load_exchange_key, plan_jwks
    from bootstrap.store import Write

    bundle = make_bundle(tmp_path / "b", NS + WI)
    layout = bundle.layout
    newer = SigningKey.generate("ES256")
    action = plan_jwks(layout, [newer], force=False)
    assert isinstance(action, Write)
    kids = {k["kid"] for k in json.loads(action.data)["keys"]}
    assert kids == {newer.kid, load_exchange_key(layout).kid}
    assert active_signing_key(layout, load_published_keys(layout)).kid not in kids
