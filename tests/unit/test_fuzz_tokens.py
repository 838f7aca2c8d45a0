"""Fuzzing what callers and issuers send the token checks: bearer tokens (forged header segments,
kid and alg of every JSON type, claims of the wrong type, huge arrays) through the codec's and
the gate's Authenticator, form bodies through the token exchange's POST /token (its whole aiohttp
stack, middlewares included), and JWKS / discovery documents of random shape through the fetch
parser into the key maps. The invariant everywhere: an answer in 2xx/4xx or a refusal, never a
5xx, a traceback, a hang or a write. Budgets (max_examples) are stated on each test."""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.parse

import jwt
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from bootstrap.core.claims import PERMISSIONS_CLAIM
from bootstrap.core.pki import utcnow
from bootstrap.core.tokens import SigningKey, jwks_document, verify_token
from bootstrap.core.workload_identity import (GRANT_TYPE, JWT_TOKEN_TYPE, Binding, WorkloadIdentityConfig,
                                              WorkloadIssuer)
from bootstrap.servers.auth import Authenticator, JWKSUnavailable, URLJWKS, jwks_of, role_for
from bootstrap.servers.events import Refusal
from bootstrap.servers.exchange import ExchangePolicy, IssuerKeys, make_server
from bootstrap.servers.fetch import FetchError, parse_object

AUDIENCE, ISSUER = "temporal", "https://issuer.example"
KEY = SigningKey.generate("ES256")
OTHER = SigningKey.generate("ES256")
KEY_SET = jwks_document([KEY])

# --------------------------------------------------------------------------- strategies

scalars = (st.none() | st.booleans() | st.integers(min_value=-(10 ** 400), max_value=10 ** 400)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
kids = st.sampled_from([KEY.kid, OTHER.kid]) | json_values
algs = st.sampled_from(["ES256", "RS256", "HS256", "none", "EdDSA", "es256"]) | json_values


def current() -> int:
    """Now, read when a token is made: the suite runs for minutes, longer than a token lives."""
    return int(utcnow().timestamp())


IMPORTED_AT = current()  # fuzzed time claims only: whether they are stale is part of the fuzz
times = st.sampled_from([IMPORTED_AT - 3600, IMPORTED_AT, IMPORTED_AT + 3600, 10 ** 400]) | json_values
claim_names = st.sampled_from(["sub", "iss", "aud", "exp", "iat", "nbf", PERMISSIONS_CLAIM, "kubernetes.io", "jti"])


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(value) -> str:
    return b64(json.dumps(value).encode())


def signed(header_segment: str, payload_segment: str, key: SigningKey = KEY) -> str:
    message = f"{header_segment}.{payload_segment}".encode()
    signature = jwt.algorithms.ECAlgorithm(jwt.algorithms.ECAlgorithm.SHA256).sign(message, key.private_key)
    return f"{message.decode()}.{b64(signature)}"


@st.composite
def headers(draw):
    header = {"alg": draw(algs), "kid": draw(kids), "typ": "JWT"}
    header.update(draw(st.dictionaries(st.sampled_from(["alg", "kid", "typ", "crit", "jku", "x5u"]), json_values,
                                       max_size=2)))
    return draw(st.sampled_from([segment(header), segment(draw(json_values)), b64(draw(st.binary(max_size=40))),
                                 draw(st.text(max_size=20))]))


@st.composite
def tokens(draw, issuer=ISSUER, audience=AUDIENCE, key=KEY, base=None):
    """A valid token with one thing changed: most examples get past the signature check."""
    now = current()
    body = {"sub": "repo:x", "iss": issuer, "aud": audience, "iat": now - 60, "nbf": now - 60, "exp": now + 600,
            PERMISSIONS_CLAIM: ["orders:admin"], **(base or {})}
    header = segment({"alg": "ES256", "kid": key.kid, "typ": "JWT"})
    change = draw(st.sampled_from(["none", "claim", "time", "permissions", "header", "payload", "key", "garbage",
                                   "two-parts"]))
    if change == "claim":
        body[draw(claim_names)] = draw(json_values)
    elif change == "time":
        body[draw(st.sampled_from(["exp", "iat", "nbf"]))] = draw(times)
    elif change == "permissions":
        body[PERMISSIONS_CLAIM] = draw(st.lists(st.text(max_size=20) | json_values, max_size=3000) | json_values)
    elif change == "header":
        header = draw(headers())
    payload = segment(draw(json_values)) if change == "payload" else segment(body)
    if change == "garbage":
        return f"{header}.{payload}.{draw(st.text(max_size=20))}"
    if change == "two-parts":
        return f"{header}.{payload}"
    return signed(header, payload, OTHER if change == "key" else key)


class FixedKeys:
    description = "fixed"

    def __init__(self, doc: dict):
        self.doc = doc

    async def key_set(self, kid=None) -> dict:
        return self.doc

    async def close(self) -> None:
        pass


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 5))  # a hang fails


# --------------------------------------------------------------------------- bearer tokens


@settings(max_examples=1000)
@given(token=tokens(), scheme=st.sampled_from(["Bearer", "bearer", "Basic", ""]))
def test_fuzzed_bearer_tokens_are_verified_or_refused_with_401(token, scheme):
    async def check():
        auth = Authenticator(FixedKeys(KEY_SET), AUDIENCE, (ISSUER,))
        try:
            verified = await auth.claims(f"{scheme} {token}")
        except Refusal as refusal:
            assert refusal.status == 401, refusal.message
            return
        assert isinstance(verified["sub"], str) and type(verified["exp"]) is int
        for namespace in ("orders", "temporal-system"):
            role_for(verified, namespace)  # whatever permissions hold, the lattice answers

    run(check())


def test_a_signed_token_with_a_huge_permissions_array_is_checked_quickly():
    now = current()
    permissions = [f"ns-{i}:read" for i in range(200_000)] + [{"a": 1}, 7, None, "orders:admin"]
    body = {"sub": "svc", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 60, PERMISSIONS_CLAIM: permissions}
    token = signed(segment({"alg": "ES256", "kid": KEY.kid}), segment(body))

    async def check():
        verified = await Authenticator(FixedKeys(KEY_SET), AUDIENCE, (ISSUER,)).claims(f"Bearer {token}")
        assert role_for(verified, "orders") == 8

    run(check())


# --------------------------------------------------------------------------- JWKS and discovery documents


jwk_members = st.fixed_dictionaries({}, optional={
    "kty": st.sampled_from(["EC", "RSA", "oct", "OKP"]) | json_values,
    "crv": st.sampled_from(["P-256", "P-384", "Ed25519"]) | json_values,
    "x": st.just(KEY.public_jwk()["x"]) | json_values, "y": st.just(KEY.public_jwk()["y"]) | json_values,
    "n": json_values, "e": st.just("AQAB") | json_values, "k": json_values,
    "alg": algs, "use": json_values, "kid": kids,
})
documents = st.one_of(json_values, st.fixed_dictionaries(
    {"keys": st.lists(jwk_members | json_values, max_size=4) | json_values}, optional={"x": json_values}))


@settings(max_examples=500)
@given(jwk=jwk_members)
def test_verify_token_raises_only_jwt_errors_for_any_published_key_shape(jwk):
    """verify_token's contract: a PyJWTError on any failure (the callers map it to 401 / 400)."""
    now = current()
    token = signed(segment({"alg": "ES256", "kid": KEY.kid}),
                   segment({"sub": "s", "aud": AUDIENCE, "iat": now, "exp": now + 60}))
    try:
        verify_token(token, {"keys": [{**jwk, "kid": KEY.kid}]}, audience=AUDIENCE)
    except jwt.PyJWTError:
        pass


def encoded(doc) -> bytes:
    return json.dumps(doc, allow_nan=True).encode()


@settings(max_examples=600)
@given(doc=documents, token=tokens())
def test_fuzzed_jwks_documents_become_key_sets_or_fetch_errors_and_tokens_get_401(doc, token):
    try:
        key_set = jwks_of(parse_object(encoded(doc)))
    except FetchError:
        return
    assert all(isinstance(k, dict) and isinstance(k["kid"], str) for k in key_set["keys"])

    class Fetched:
        async def get(self, url):
            return json.loads(encoded(doc))

        async def close(self):
            pass

    async def check():
        source = URLJWKS("https://jwks.invalid/jwks.json", None, fetcher=Fetched())
        auth = Authenticator(source, AUDIENCE, (ISSUER,))
        try:
            await auth.claims(f"Bearer {token}")
        except Refusal as refusal:
            assert refusal.status in (401, 503), refusal.message
        finally:
            await source.close()

    run(check())


@settings(max_examples=300)
@given(doc=documents | st.fixed_dictionaries({"issuer": st.just(ISSUER) | json_values,
                                              "jwks_uri": st.just(ISSUER + "/keys") | json_values}))
def test_fuzzed_discovery_documents_give_key_sets_or_unavailable(doc):
    """The same document answers discovery and the JWKS fetch: both parsers see every shape."""
    keys = IssuerKeys(WorkloadIssuer("cluster", "oidc", ISSUER, AUDIENCE))

    async def get(url):
        return parse_object(encoded(doc))

    async def check():
        keys.fetcher.get = get
        try:
            key_set = await keys.key_set(KEY.kid)
            assert all(isinstance(k["kid"], str) for k in key_set["keys"])
        except JWKSUnavailable:
            pass
        finally:
            await keys.close()

    run(check())


# --------------------------------------------------------------------------- POST /token


ISSUER_KEY = SigningKey.generate("ES256")
WORKLOAD_ISSUER = WorkloadIssuer("ci", "oidc", ISSUER, "temporal-service")
KUBE_ISSUER = WorkloadIssuer("cluster", "kubernetes", "https://kube.example", "temporal-service")
POLICY = ExchangePolicy(WorkloadIdentityConfig(enabled=True, issuers=(WORKLOAD_ISSUER, KUBE_ISSUER), bindings=(
    Binding(("ci",), subject="repo:*", permissions=("orders:write",)),
    Binding(("cluster",), namespace="orders", service_account="worker", permissions=("orders:write",)))),
    ("orders",), "temporal-bundle", AUDIENCE)


@pytest.fixture(scope="module")
def exchange(tmp_path_factory):
    """The exchange's real aiohttp app (middlewares included); the issuer's keys are fixed."""
    key_file = tmp_path_factory.mktemp("exchange") / "signing.key"
    key_file.write_bytes(KEY.private_pem())
    service = make_server("127.0.0.1", 0, policy=POLICY, key_file=key_file, cert=None, tls_key=None)
    service.exchange.keys = {i.issuer: FixedKeys(jwks_document([ISSUER_KEY])) for i in POLICY.workload.issuers}
    loop = asyncio.new_event_loop()
    client = TestClient(TestServer(service.app), loop=loop)
    loop.run_until_complete(client.start_server())
    yield loop, client
    loop.run_until_complete(client.close())
    loop.close()
    service.server_close()


KUBE_CLAIMS = {"sub": "system:serviceaccount:orders:worker",
               "kubernetes.io": {"namespace": "orders", "serviceaccount": {"name": "worker", "uid": "u1"},
                                 "pod": {"name": "worker-0", "uid": "u2"}}}


def subject_tokens():
    return (tokens(ISSUER, "temporal-service", ISSUER_KEY)
            | tokens(KUBE_ISSUER.issuer, "temporal-service", ISSUER_KEY, KUBE_CLAIMS))


form_fields = st.sampled_from(["grant_type", "subject_token", "subject_token_type", "requested_token_type",
                               "audience", "scope", "resource"]) | st.text(max_size=8)
form_values = st.sampled_from([GRANT_TYPE, JWT_TOKEN_TYPE, AUDIENCE, ""]) | st.text(max_size=30)


FORM_TYPE = "application/x-www-form-urlencoded"


@st.composite
def forms(draw):
    """(content type, body): mostly a well-formed exchange request around a fuzzed subject token."""
    kind = draw(st.sampled_from(["exchange", "exchange", "exchange", "random-fields", "raw"]))
    if kind == "raw":
        return draw(st.sampled_from([FORM_TYPE, "application/json", "text/plain"])), draw(st.binary(max_size=200))
    fields = {"grant_type": GRANT_TYPE, "subject_token": draw(subject_tokens()), "subject_token_type": JWT_TOKEN_TYPE}
    pairs = list(fields.items())
    if kind == "random-fields":
        fields.update(draw(st.dictionaries(form_fields, form_values, max_size=4)))
        pairs = list(fields.items()) + draw(st.lists(st.tuples(form_fields, form_values), max_size=2))
    return FORM_TYPE, urllib.parse.urlencode(pairs).encode()


@settings(max_examples=1000)
@given(form=forms())
def test_fuzzed_exchange_forms_are_answered_2xx_or_4xx_json(exchange, form):
    loop, client = exchange
    content_type, body = form

    async def post():
        response = await client.post("/token", data=body, headers={"Content-Type": content_type})
        return response.status, await response.json()

    status, doc = loop.run_until_complete(asyncio.wait_for(post(), 5))
    assert status < 500, (status, doc)
    if status == 200:
        claims = jwt.decode(doc["access_token"], options={"verify_signature": False})
        assert claims["permissions"] == ["orders:write"]
        assert claims["sub"] in ("ci:repo:x", "cluster:system:serviceaccount:orders:worker")
    else:
        assert isinstance(doc.get("error"), str), doc


def test_a_subject_token_expiring_beyond_any_float_gets_the_configured_lifetime_not_a_500(exchange):
    now = current()
    loop, client = exchange
    body = {"sub": "repo:x", "iss": ISSUER, "aud": "temporal-service", "iat": now, "nbf": now, "exp": 10 ** 400}
    token = signed(segment({"alg": "ES256", "kid": ISSUER_KEY.kid}), segment(body), ISSUER_KEY)
    form = urllib.parse.urlencode({"grant_type": GRANT_TYPE, "subject_token": token, "subject_token_type": JWT_TOKEN_TYPE})

    async def post():
        response = await client.post("/token", data=form, headers={"Content-Type": "application/x-www-form-urlencoded"})
        return response.status, await response.json()

    status, doc = loop.run_until_complete(post())
    assert status == 200 and doc["expires_in"] == 600, (status, doc)  # workload_identity.token_lifetime


def test_a_valid_exchange_still_succeeds(exchange):
    """The fuzz above must be able to reach the 200 path: one plain valid exchange."""
    now = current()
    loop, client = exchange
    body = {"sub": "repo:x", "iss": ISSUER, "aud": "temporal-service", "iat": now, "nbf": now, "exp": now + 600}
    token = signed(segment({"alg": "ES256", "kid": ISSUER_KEY.kid}), segment(body), ISSUER_KEY)
    form = urllib.parse.urlencode({"grant_type": GRANT_TYPE, "subject_token": token, "subject_token_type": JWT_TOKEN_TYPE})

    async def post():
        response = await client.post("/token", data=form, headers={"Content-Type": "application/x-www-form-urlencoded"})
        return response.status, await response.json()

    status, doc = loop.run_until_complete(post())
    assert status == 200, doc
    assert verify_token(doc["access_token"], KEY_SET, audience=AUDIENCE)["permissions"] == ["orders:write"]

