"""The token checks pinned down to the operator: each test here kills mutants (mutmut 3, see
scripts/mutation.sh) that the behavioural suites let live: a Basic scheme passing as Bearer, a
role claim read from the wrong name, an unknown role worth a bit, a cache that keeps a token one
tick past its exp or evicts the newest entry, a key set asked for the wrong kid, a backoff off by
one step. Everything runs in-process against fake key sources and a fake clock: no network."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from datetime import timedelta

import jwt
import pytest

from bootstrap.core.tokens import (SigningKey, decode_unverified, jwk_algorithm, jwk_thumbprint, jwks_bytes, jwks_document,
                                   mint_token, verify_token)
from bootstrap.errors import BundleError
from bootstrap.servers import auth
from bootstrap.servers.auth import (Authenticator, CombinedJWKS, FileJWKS, JWKSUnavailable, URLJWKS, grants,
                                    jwks_of, key_sources, role_for)
from bootstrap.servers.events import Refusal
from bootstrap.servers.fetch import FetchError

AUDIENCE, ISSUER = "temporal", "temporal-bundle"
KEY = SigningKey.generate("ES256")
KEY_SET = jwks_document([KEY])


def token(key: SigningKey = KEY, kid: str | None = None, **claims) -> str:
    """A good bundle token, or one signed by `key` under `kid` with `claims` changed."""
    minted = mint_token(key, role="t", permissions=["orders:read"], issuer=ISSUER, audience=AUDIENCE,
                        lifetime=timedelta(hours=1))
    if kid is None and not claims:
        return minted.encoded
    return jwt.encode({**minted.claims, **claims}, key.private_key, algorithm=key.algorithm,
                      headers={"kid": kid or key.kid})


class Clock:
    """Stands in for the `time` module inside bootstrap.servers.auth: both clocks move only when told."""

    def __init__(self, monotonic: float = 1000.0, wall: float | None = None):
        self.now, self.wall = monotonic, wall

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        import time

        return time.time() if self.wall is None else self.wall


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(auth, "time", fake)
    return fake


class Keys:
    """A key source that counts the lookups and records the kid each one asked for."""

    def __init__(self, doc: dict | None = None, error: str | None = None, description: str = "keys"):
        self._doc, self.error, self.description, self.asked = doc, error, description, []

    async def key_set(self, kid=None) -> dict:
        self.asked.append(kid)
        if self.error:
            raise JWKSUnavailable(self.error)
        return self._doc

    async def close(self) -> None:
        self.closed = True


def claims_of(authenticator: Authenticator, authorization: str | None) -> dict:
    return asyncio.run(authenticator.claims(authorization))


def refusal(authenticator: Authenticator, authorization: str | None) -> Refusal:
    with pytest.raises(Refusal) as refused:
        claims_of(authenticator, authorization)
    return refused.value


# --------------------------------------------------------------------------- core.tokens


def test_a_signing_key_that_is_not_pem_is_named_in_the_error():
    with pytest.raises(BundleError, match="^signing key: not a readable"):
        SigningKey.from_pem(b"not a key")
    with pytest.raises(BundleError, match="^keys/x.pem: not a readable"):
        SigningKey.from_pem(b"not a key", "keys/x.pem")


def test_the_published_key_is_a_signature_key_named_by_its_thumbprint():
    jwk = KEY.public_jwk()
    assert (jwk["use"], jwk["alg"], jwk["kid"]) == ("sig", "ES256", jwk_thumbprint(jwk))
    assert set(jwk) == {"kty", "crv", "x", "y", "kid", "use", "alg"}


def test_jwks_bytes_are_two_space_indented_with_sorted_members():
    """Same keys, same bytes: a re-run leaves jwks.json as it was."""
    text = jwks_bytes([KEY]).decode()
    assert text.splitlines()[:4] == ["{", '  "keys": [', "    {", '      "alg": "ES256",'] and text.endswith("  ]\n}\n")
    members = re.findall(r'^      "(\w+)":', text, re.M)
    assert members == sorted(members) == sorted(KEY.public_jwk())


def test_a_minted_token_carries_every_claim_and_header_the_server_reads():
    first, second = (mint_token(KEY, role="worker", permissions=("orders:write",), issuer=ISSUER, audience=AUDIENCE,
                                lifetime=timedelta(minutes=5)) for _ in range(2))
    header, claims = decode_unverified(first.encoded)
    assert header == {"alg": "ES256", "kid": KEY.kid, "typ": "JWT"}
    assert claims == first.claims and set(claims) == {"sub", "iss", "aud", "iat", "nbf", "exp", "jti", "permissions",
                                                      "groups"}
    assert claims["nbf"] == claims["iat"] == claims["exp"] - 300
    assert str(uuid.UUID(claims["jti"])) == claims["jti"] != second.claims["jti"]
    assert (first.role, first.kid) == ("worker", KEY.kid)


def test_verify_token_names_what_is_wrong_as_temporal_does():
    with pytest.raises(jwt.InvalidTokenError, match='^malformed token - no "kid" header$'):
        verify_token(jwt.encode({"sub": "x"}, KEY.private_key, algorithm="ES256"), KEY_SET, audience=AUDIENCE)
    hs256 = jwt.encode({"sub": "x"}, "secret-secret-secret-secret-32by", algorithm="HS256", headers={"kid": KEY.kid})
    with pytest.raises(jwt.InvalidAlgorithmError, match="^only ES256 and RS256 tokens are accepted$"):
        verify_token(hs256, KEY_SET, audience=AUDIENCE)
    with pytest.raises(jwt.InvalidTokenError, match=f"^unknown kid '{KEY.kid}'$"):
        verify_token(token(), {}, audience=AUDIENCE)


@pytest.mark.parametrize("jwk, algorithm", [
    ({"alg": "ES256", "kty": "RSA"}, "ES256"),  # the publisher's alg wins over the key type
    ({"alg": "HS256"}, "HS256"),
    ({"alg": 5, "kty": "EC"}, ""),
    ({"alg": "", "kty": "EC"}, "ES256"),
    ({"kty": "EC"}, "ES256"),
    ({"kty": "RSA"}, "RS256"),
    ({"kty": "oct"}, ""),
    ({"kty": ["EC"]}, ""),
    ({}, ""),
])
def test_jwk_algorithm(jwk, algorithm):
    assert jwk_algorithm(jwk) == algorithm


@pytest.mark.parametrize("published, named", [({"alg": "HS256"}, "HS256"), ({"alg": None, "kty": "oct"}, "an unknown algorithm")])
def test_a_key_published_for_another_algorithm_is_named_in_the_refusal(published, named):
    jwks = {"keys": [{**KEY_SET["keys"][0], **published}]}
    with pytest.raises(jwt.InvalidAlgorithmError, match=f"^key '{KEY.kid}' is for {named}, not ES256 or RS256$"):
        verify_token(token(), jwks, audience=AUDIENCE)


def test_iss_is_required_only_when_issuers_are_given():
    claims = decode_unverified(token())[1]
    del claims["iss"]
    anonymous = jwt.encode(claims, KEY.private_key, algorithm="ES256", headers={"kid": KEY.kid})
    assert "iss" not in verify_token(anonymous, KEY_SET, audience=AUDIENCE)
    with pytest.raises(jwt.MissingRequiredClaimError):
        verify_token(anonymous, KEY_SET, audience=AUDIENCE, issuers=(ISSUER,))


def test_leeway_is_passed_on_to_the_time_checks():
    now = int(time.time())
    stale = token(iat=now - 60, nbf=now - 60, exp=now - 5)
    with pytest.raises(jwt.ExpiredSignatureError):
        verify_token(stale, KEY_SET, audience=AUDIENCE)
    assert verify_token(stale, KEY_SET, audience=AUDIENCE, leeway=30)["exp"] == now - 5


@pytest.mark.parametrize("name", ["exp", "nbf", "iat"])
def test_a_time_claim_that_is_not_an_integer_is_named(name):
    value = decode_unverified(token())[1][name] + 0.5
    with pytest.raises(jwt.InvalidTokenError, match=f"^{name} must be an integer NumericDate$"):
        verify_token(token(**{name: value}), KEY_SET, audience=AUDIENCE)


def test_decode_unverified_reads_any_token_without_its_key_or_clock():
    stale = jwt.encode({"sub": "s", "exp": 1}, SigningKey.generate("ES256").private_key, algorithm="ES256",
                       headers={"kid": "gone"})
    assert decode_unverified(stale) == ({"alg": "ES256", "kid": "gone", "typ": "JWT"}, {"sub": "s", "exp": 1})
    with pytest.raises(BundleError, match="^not a readable JWT: Not enough segments$"):
        decode_unverified("garbage")


# --------------------------------------------------------------------------- Authenticator


@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Bearer   ", "Basic {t}", "Token {t}", "{t}"])
def test_anything_but_a_bearer_token_is_refused_before_any_key_lookup(authorization):
    keys = Keys(KEY_SET)
    refused = refusal(Authenticator(keys, AUDIENCE), authorization and authorization.format(t=token()))
    assert (refused.status, refused.message, refused.detail) == (401, "missing bearer token", None)
    assert keys.asked == []


@pytest.mark.parametrize("authorization", ["Bearer {t}", "bearer {t}", "BEARER {t}", "  Bearer  {t}  "])
def test_the_bearer_scheme_is_case_blind_and_spaces_around_the_token_do_not_matter(authorization):
    assert claims_of(Authenticator(Keys(KEY_SET), AUDIENCE), authorization.format(t=token()))["sub"] == "temporal-bundle:t"


def test_the_key_set_is_asked_for_the_tokens_own_kid():
    keys = Keys(KEY_SET)
    claims_of(Authenticator(keys, AUDIENCE), f"Bearer {token()}")
    assert keys.asked == [KEY.kid]


def test_an_unreadable_token_is_a_401_with_the_parsers_reason_as_detail():
    refused = refusal(Authenticator(Keys(KEY_SET), AUDIENCE), "Bearer not-a-jwt")
    assert (refused.status, refused.message) == (401, "invalid token")
    assert refused.detail and "not enough segments" in refused.detail.lower()


def test_a_token_without_a_kid_is_a_401_naming_the_header():
    unnamed = jwt.encode({"sub": "x"}, KEY.private_key, algorithm="ES256")
    keys = Keys(KEY_SET)
    refused = refusal(Authenticator(keys, AUDIENCE), f"Bearer {unnamed}")
    assert (refused.status, refused.message, refused.detail) == (401, "invalid token", 'no "kid" header')
    assert keys.asked == []


def test_no_key_set_at_hand_is_a_503_with_the_sources_reason():
    refused = refusal(Authenticator(Keys(error="https://jwks:8443/jwks.json: no key set fetched yet"), AUDIENCE),
                      f"Bearer {token()}")
    assert (refused.status, refused.message) == (503, "token keys unavailable")
    assert refused.detail == "https://jwks:8443/jwks.json: no key set fetched yet"


@pytest.mark.parametrize("forgery, reason", [
    (lambda: token(SigningKey.generate("ES256"), kid=KEY.kid), "signature"),
    (lambda: token(aud="someone-else"), "audience"),
    (lambda: token(iss="https://elsewhere.example"), "issuer"),
])
def test_a_token_that_does_not_verify_is_a_401_with_the_reason_as_detail(forgery, reason):
    refused = refusal(Authenticator(Keys(KEY_SET), AUDIENCE, issuers=(ISSUER,)), f"Bearer {forgery()}")
    assert (refused.status, refused.message) == (401, "invalid token")
    assert reason in refused.detail.lower()


def test_the_defaults_are_the_documented_30_seconds_and_1024_tokens():
    authenticator = Authenticator(Keys(KEY_SET), AUDIENCE)
    assert (authenticator.remember, authenticator.capacity) == (30.0, 1024)


def test_a_remembered_token_is_verified_again_exactly_when_remember_runs_out(clock):
    keys = Keys(KEY_SET)
    authenticator, bearer = Authenticator(keys, AUDIENCE, remember=30), f"Bearer {token()}"
    claims_of(authenticator, bearer)
    clock.now += 29.5
    claims_of(authenticator, bearer)
    assert len(keys.asked) == 1
    clock.now += 0.5
    claims_of(authenticator, bearer)
    assert len(keys.asked) == 2


def test_a_remembered_token_is_verified_again_exactly_at_its_exp(clock):
    keys = Keys(KEY_SET)
    authenticator, encoded = Authenticator(keys, AUDIENCE, remember=3600), token()
    claims_of(authenticator, f"Bearer {encoded}")
    clock.wall = jwt.decode(encoded, options={"verify_signature": False})["exp"]
    claims_of(authenticator, f"Bearer {encoded}")  # PyJWT's clock is the real one: still valid there
    assert len(keys.asked) == 2


def test_the_cache_holds_capacity_tokens_and_evicts_the_least_recently_used():
    keys = Keys(KEY_SET)
    authenticator = Authenticator(keys, AUDIENCE, capacity=2)
    first, second, third = (f"Bearer {token()}" for _ in range(3))
    for bearer in (first, second, first, second):
        claims_of(authenticator, bearer)
    assert len(keys.asked) == 2, "two tokens fit a capacity of two"
    claims_of(authenticator, first)  # first is now the most recently used
    claims_of(authenticator, third)  # evicts second
    asked = len(keys.asked)
    claims_of(authenticator, third)
    claims_of(authenticator, first)
    assert len(keys.asked) == asked
    claims_of(authenticator, second)
    assert len(keys.asked) == asked + 1


# --------------------------------------------------------------------------- role lattice


@pytest.mark.parametrize("permissions, bits", [
    ([42, "orders", "a:b:read", "orders:read"], 2),  # malformed entries are skipped, not the end of the list
    (["orders:superuser"], 0),  # an unknown role is worth nothing
    (["orders:superuser", "orders:read"], 2),
    (["orders:admin", "orders:read"], 10),  # grants on one namespace add up
    (["temporal-system:admin", "temporal-system:read"], 10),
    (["orders:Admin"], 8),
    (["temporal-system:read", "orders:write"], 4),  # the better of system and namespace grants
])
def test_role_bits(permissions, bits):
    assert role_for({"groups": permissions}, "orders") == bits


def test_grants_read_the_claim_they_are_given():
    claims = {"roles": ["orders:admin"], "groups": ["orders:read"]}
    assert grants(claims, "orders", "admin", claim="roles")
    assert not grants(claims, "orders", "admin")


# --------------------------------------------------------------------------- key documents


def test_kids_skip_entries_that_are_not_keys_with_a_string_kid():
    assert auth._kids(None) == auth._kids({}) == set()
    assert auth._kids({"keys": ["x", 3, {"kid": 5}, {"kid": "a"}, {}]}) == {"a"}


def test_jwks_of_keeps_only_objects_with_a_string_kid():
    doc = jwks_of({"keys": ["x", {"kid": 5}, {"kid": "a", "kty": "EC"}], "extra": 1})
    assert doc == {"keys": [{"kid": "a", "kty": "EC"}], "extra": 1}
    with pytest.raises(FetchError, match=r"^not a JWKS document \(no keys array\)$"):
        jwks_of({"keys": {"kid": "a"}})


def test_key_sources_builds_url_sources_with_the_ca_then_the_file_then_refuses(tmp_path):
    ca = tmp_path / "ca.pem"
    combined = key_sources(tmp_path / "jwks.json", ("https://a/jwks.json", "https://b/jwks.json"), ca)
    assert [(s.url, s.cafile) for s in combined.sources] == [("https://a/jwks.json", ca), ("https://b/jwks.json", ca)]
    assert combined.description == "https://a/jwks.json, https://b/jwks.json"
    single = key_sources(tmp_path / "jwks.json", (), ca)
    assert isinstance(single, FileJWKS) and single.description == str(tmp_path / "jwks.json")
    with pytest.raises(BundleError, match=r"^a JWKS file or URL is needed to check tokens$"):
        key_sources(None, (), ca)


def test_the_jwks_file_is_read_and_re_read_when_it_changes(tmp_path):
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(KEY_SET))
    source = FileJWKS(path)
    assert asyncio.run(source.key_set()) == KEY_SET
    other = jwks_document([SigningKey.generate("ES256"), KEY])
    path.write_text(json.dumps(other, indent=1))
    assert asyncio.run(source.key_set()) == other
    path.write_text("{")
    with pytest.raises(JWKSUnavailable, match=f"^{path}: "):
        asyncio.run(source.key_set())


def test_combined_sources_merge_their_keys_and_pass_the_kid_on():
    first, empty = Keys({"keys": [{"kid": "a"}]}, description="one"), Keys({}, description="two")
    broken = Keys(error="down", description="three")
    combined = CombinedJWKS([first, empty, broken])
    assert combined.description == "one, two, three"
    assert asyncio.run(combined.key_set("z")) == {"keys": [{"kid": "a"}]}
    assert first.asked == empty.asked == broken.asked == ["z"]


def test_a_source_without_a_cached_document_is_simply_asked():
    class Plain:
        description = "plain"

        async def key_set(self, kid=None):
            return {"keys": [{"kid": "p"}]}

    assert asyncio.run(CombinedJWKS([Plain()]).key_set("p")) == {"keys": [{"kid": "p"}]}


def test_combined_sources_all_down_is_unavailable_with_every_reason():
    combined = CombinedJWKS([Keys(error="a down"), Keys(error="b down")])
    with pytest.raises(JWKSUnavailable, match=r"^a down; b down$"):
        asyncio.run(combined.key_set("k"))


def test_a_known_kid_asks_only_the_sources_that_know_it():
    knows, slow = Keys({"keys": [{"kid": "k"}]}), Keys({"keys": [{"kid": "other"}]})
    combined = CombinedJWKS([slow, knows])
    assert asyncio.run(combined.key_set("k")) == {"keys": [{"kid": "k"}]}
    assert (knows.asked, slow.asked) == (["k"], [])
    asyncio.run(combined.key_set("new"))
    assert (knows.asked, slow.asked) == (["k", "new"], ["new"])


# --------------------------------------------------------------------------- URL key sets


class Fetcher:
    """What URLJWKS fetches through: each get() returns the next scripted document or raises it."""

    def __init__(self, *script):
        self.script, self.urls, self.closed = list(script), [], False

    async def get(self, url: str) -> dict:
        self.urls.append(url)
        step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(step, Exception):
            raise step
        return step

    async def close(self) -> None:
        self.closed = True


def lookup(source: URLJWKS, kid: str | None):
    async def ask():
        try:
            return await source.key_set(kid)
        finally:
            if source._fetch_task is not None:
                await source._fetch_task  # let a background refresh land before the next step
    return asyncio.run(ask())


def test_url_defaults_are_a_minute_between_refreshes_and_five_seconds_for_unknown_kids():
    source = URLJWKS("https://jwks/jwks.json", None)
    assert (source.ttl, source.unknown_every) == (60.0, 5.0)


def test_a_cached_set_is_refreshed_exactly_when_its_ttl_runs_out(clock):
    fetcher = Fetcher(KEY_SET)
    source = URLJWKS("https://jwks/jwks.json", None, ttl=60, unknown_every=5, fetcher=fetcher)
    lookup(source, KEY.kid)
    clock.now += 59.5
    lookup(source, KEY.kid)
    assert len(fetcher.urls) == 1
    clock.now += 0.5
    assert lookup(source, KEY.kid) == KEY_SET
    assert fetcher.urls == ["https://jwks/jwks.json"] * 2


def test_an_unknown_kid_refetches_at_most_every_unknown_every_seconds(clock):
    fetcher = Fetcher(KEY_SET)
    source = URLJWKS("https://jwks/jwks.json", None, ttl=600, unknown_every=5, fetcher=fetcher)
    lookup(source, "unknown")
    clock.now += 4.5
    assert lookup(source, "unknown") == KEY_SET
    assert len(fetcher.urls) == 1
    clock.now += 0.5
    lookup(source, "unknown")
    assert len(fetcher.urls) == 2


def test_without_any_set_a_failed_fetch_backs_off_1_2_4_seconds_and_logs_each_failure(clock, capsys):
    fetcher = Fetcher(FetchError("connection refused"))
    source = URLJWKS("https://jwks/jwks.json", None, unknown_every=5, fetcher=fetcher)
    for failures, wait in ((1, 1.0), (2, 2.0), (3, 4.0)):
        with pytest.raises(JWKSUnavailable, match="no key set fetched yet"):
            lookup(source, "k")
        assert len(fetcher.urls) == failures
        event = json.loads(capsys.readouterr().err.splitlines()[-1])
        assert {k: event[k] for k in ("event", "url", "failures", "error")} == {
            "event": "jwks-fetch-failed", "url": "https://jwks/jwks.json", "failures": failures,
            "error": "connection refused"}
        clock.now += wait - 0.25
        with pytest.raises(JWKSUnavailable):
            lookup(source, "k")
        assert len(fetcher.urls) == failures, f"fetched again before the {wait}s backoff"
        clock.now += 0.25


@pytest.mark.parametrize("failures, backoff", [(0, 0.0), (1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0), (7, 60.0), (30, 60.0)])
def test_the_backoff_doubles_from_one_second_to_a_minute(failures, backoff):
    source = URLJWKS("https://jwks/jwks.json", None)
    source._failures, source._attempted = failures, 100.0
    assert source._may_fetch(100.0 + backoff, 0)
    assert not source._may_fetch(100.0 + backoff - 0.25, 0) or backoff == 0


def test_the_fetch_uses_the_token_file_and_ca_and_close_closes_the_fetcher(tmp_path, monkeypatch):
    from bootstrap.servers import fetch

    made = []

    class Recording(Fetcher):
        def __init__(self, *args, **kwargs):
            super().__init__(KEY_SET)
            made.append(set(map(str, (*args, *kwargs.values()))))

    monkeypatch.setattr(fetch, "JSONFetcher", Recording)
    source = URLJWKS("https://jwks/jwks.json", tmp_path / "ca.pem", token_file=tmp_path / "token")
    assert lookup(source, KEY.kid) == KEY_SET
    assert len(made) == 1 and {str(tmp_path / "ca.pem"), str(tmp_path / "token")} <= made[0]
    asyncio.run(source.close())
    assert source._fetcher.closed
