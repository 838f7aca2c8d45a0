"""Role tokens and the JWKS: verifiable the way Temporal's default claim mapper does it (kid lookup,
ES256/RS256 only, exp/nbf/iat, audience), and rejected for every classic forgery."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from datetime import timedelta

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from bootstrap.errors import BundleError
from bootstrap.core.pki import private_key_pem, utcnow
from bootstrap.core.tokens import SigningKey, jwk_thumbprint, jwks_bytes, jwks_document, mint_token, verify_token

AUDIENCE = "temporal"
ROLE_LIFETIMES = {"system": timedelta(hours=1), "worker": timedelta(hours=24), "client": timedelta(hours=24)}
PERMISSIONS = {
    "system": ["temporal-system:admin"],
    "worker": ["default:write", "other:write"],
    "client": ["default:write", "other:write"],
}

# RFC 7638 section 3.1: the RSA key from RFC 7517 appendix A.1 and its JWK thumbprint.
RFC7638_N = (
    "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknj"
    "hMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQ"
    "vRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzK"
    "nqDKgw"
)
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_json(obj: dict) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def parts(token: str) -> tuple[dict, dict, str]:
    header, payload, signature = token.split(".")
    return json.loads(unb64url(header)), json.loads(unb64url(payload)), signature


def good_claims(**overrides) -> dict:
    now = int(utcnow().timestamp())
    claims = {
        "sub": "temporal-bundle:test",
        "iss": "temporal-bundle",
        "aud": AUDIENCE,
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "jti": str(uuid.uuid4()),
        "permissions": ["default:write"],
    }
    claims.update(overrides)
    return claims


@pytest.fixture(scope="module")
def signing(ec_bundle):
    """(active SigningKey, JWKS dict) of the session's ES256 bundle."""
    layout = ec_bundle.layout
    kid = layout.active_kid.read_text().strip()
    return SigningKey.from_pem(layout.signing_key(kid).read_bytes()), ec_bundle.jwks()


def sign(key: SigningKey, claims: dict, **headers) -> str:
    return jwt.encode(claims, key.private_key, algorithm=key.algorithm, headers=headers or None)


# --------------------------------------------------------------------------- the bundle's tokens


@pytest.mark.parametrize("bundle_name", ["ec_bundle", "rsa_bundle"])
def test_bundle_tokens_verify_against_jwks_json(bundle_name, request):
    bundle = request.getfixturevalue(bundle_name)
    jwks = bundle.jwks()
    for role in bundle.config.roles:
        claims = verify_token(bundle.token(role.name), jwks, audience=bundle.config.jwt.audience)
        assert claims["permissions"] == list(role.permissions)


@pytest.mark.parametrize("bundle_name, alg, kty", [("ec_bundle", "ES256", "EC"), ("rsa_bundle", "RS256", "RSA")])
def test_token_headers_and_claims(bundle_name, alg, kty, request):
    bundle = request.getfixturevalue(bundle_name)
    active = bundle.layout.active_kid.read_text().strip()
    jtis = set()
    for role, permissions in PERMISSIONS.items():
        header, claims, _ = parts(bundle.token(role))
        assert header == {"alg": alg, "kid": active, "typ": "JWT"}
        assert isinstance(claims["sub"], str) and claims["sub"] == f"temporal-bundle:{role}"
        for name in ("iat", "nbf", "exp"):
            assert isinstance(claims[name], int) and not isinstance(claims[name], bool)
        assert claims["nbf"] == claims["iat"] <= utcnow().timestamp() + 1
        assert claims["exp"] - claims["iat"] == int(ROLE_LIFETIMES[role].total_seconds())
        assert claims["iss"] == "temporal-bundle"
        assert claims["aud"] == "temporal"
        assert uuid.UUID(claims["jti"]) and claims["jti"] not in jtis
        jtis.add(claims["jti"])
        assert claims["permissions"] == permissions
        # The server reads `groups` (shared with Dex's user tokens); `permissions` stays for readers.
        assert claims["groups"] == permissions
        assert set(claims) == {"sub", "iss", "aud", "iat", "nbf", "exp", "jti", "permissions", "groups"}
    assert bundle.jwks()["keys"][0]["kty"] == kty


def test_default_permissions_never_use_the_pitfalls(ec_bundle):
    for role in ("system", "worker", "client"):
        _, claims, _ = parts(ec_bundle.token(role))
        for permission in claims["permissions"]:
            assert not permission.startswith("system:")
            assert not permission.endswith(":worker")
            assert permission.count(":") == 1


def test_kid_is_the_rfc7638_thumbprint_of_the_published_key(ec_bundle, rsa_bundle):
    for bundle in (ec_bundle, rsa_bundle):
        for jwk in bundle.jwks()["keys"]:
            assert jwk["kid"] == jwk_thumbprint(jwk)
            assert bundle.layout.signing_key(jwk["kid"]).exists()
            assert jwk["use"] == "sig" and jwk["alg"] in ("ES256", "RS256")
            assert "d" not in jwk and "p" not in jwk, "private members must never be published"


def test_ec_thumbprint_matches_an_independent_computation(signing):
    key, jwks = signing
    jwk = jwks["keys"][0]
    canonical = '{"crv":"%s","kty":"EC","x":"%s","y":"%s"}' % (jwk["crv"], jwk["x"], jwk["y"])
    assert key.kid == jwk["kid"] == b64url(hashlib.sha256(canonical.encode()).digest())


def test_rfc7638_test_vector():
    public_key = jwt.algorithms.RSAAlgorithm.from_jwk({"kty": "RSA", "n": RFC7638_N, "e": "AQAB"})
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(public_key, as_dict=True)
    assert jwk_thumbprint(jwk) == RFC7638_THUMBPRINT
    # Members outside the required set (alg, kid, use) must not change the thumbprint.
    assert jwk_thumbprint({**jwk, "alg": "RS256", "kid": "2011-04-29", "use": "sig"}) == RFC7638_THUMBPRINT


def test_jwks_bytes_are_stable_and_sorted_by_kid():
    keys = [SigningKey.generate("ES256") for _ in range(3)]
    assert jwks_bytes(keys) == jwks_bytes(list(reversed(keys)))
    kids = [k["kid"] for k in jwks_document(keys)["keys"]]
    assert kids == sorted(kids) and len(set(kids)) == 3


def test_signing_key_round_trips_through_pem():
    for algorithm in ("ES256", "RS256"):
        key = SigningKey.generate(algorithm)
        again = SigningKey.from_pem(key.private_pem())
        assert again.kid == key.kid and again.algorithm == algorithm


def test_signing_key_rejects_what_temporal_cannot_verify():
    with pytest.raises(BundleError, match="ES256 and RS256"):
        SigningKey.generate("HS256")
    with pytest.raises(BundleError, match="P-256"):
        SigningKey.from_pem(private_key_pem(ec.generate_private_key(ec.SECP384R1())))
    with pytest.raises(BundleError, match="2048"):
        SigningKey.from_pem(private_key_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)))
    with pytest.raises(BundleError):
        SigningKey.from_pem(b"not a key")


def test_mint_token_uses_the_given_clock_and_lifetime(signing):
    key, jwks = signing
    now = utcnow() - timedelta(minutes=5)
    token = mint_token(
        key, role="r", permissions=("default:read",), issuer="i", audience=AUDIENCE, lifetime=timedelta(hours=2), now=now
    )
    assert token.kid == key.kid
    assert token.claims["iat"] == int(now.timestamp())
    assert token.expires_at - token.issued_at == timedelta(hours=2)
    assert verify_token(token.encoded, jwks, audience=AUDIENCE)["sub"] == "temporal-bundle:r"


# --------------------------------------------------------------------------- forgeries and mistakes


def test_a_good_token_verifies(signing):
    key, jwks = signing
    assert verify_token(sign(key, good_claims(), kid=key.kid), jwks, audience=AUDIENCE)["permissions"] == ["default:write"]


def test_tampered_payload_with_the_original_signature_is_rejected(signing, ec_bundle):
    _, jwks = signing
    header, payload, signature = ec_bundle.token("worker").split(".")
    claims = json.loads(unb64url(payload))
    claims["permissions"] = ["temporal-system:admin"]
    forged = ".".join([header, b64url_json(claims), signature])
    with pytest.raises(jwt.InvalidSignatureError):
        verify_token(forged, jwks, audience=AUDIENCE)


def test_expired_token_is_rejected(signing):
    key, jwks = signing
    old = utcnow() - timedelta(hours=2)
    token = mint_token(
        key, role="worker", permissions=["default:write"], issuer="i", audience=AUDIENCE, lifetime=timedelta(hours=1), now=old
    )
    with pytest.raises(jwt.ExpiredSignatureError):
        verify_token(token.encoded, jwks, audience=AUDIENCE)


def test_not_yet_valid_token_is_rejected(signing):
    key, jwks = signing
    later = int(utcnow().timestamp()) + 3600
    with pytest.raises(jwt.ImmatureSignatureError):
        verify_token(sign(key, good_claims(nbf=later), kid=key.kid), jwks, audience=AUDIENCE)


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_unsigned_alg_none_token_is_rejected(signing, alg):
    key, jwks = signing
    unsigned = f"{b64url_json({'alg': alg, 'kid': key.kid, 'typ': 'JWT'})}.{b64url_json(good_claims())}."
    with pytest.raises(jwt.PyJWTError):
        verify_token(unsigned, jwks, audience=AUDIENCE)


def test_token_signed_by_another_key_under_the_same_kid_is_rejected(signing):
    key, jwks = signing
    impostor = SigningKey.generate("ES256")
    with pytest.raises(jwt.InvalidSignatureError):
        verify_token(sign(impostor, good_claims(), kid=key.kid), jwks, audience=AUDIENCE)


def test_rsa_token_under_an_ec_kid_is_an_algorithm_error_not_a_crash(signing):
    key, jwks = signing
    impostor = SigningKey.generate("RS256")
    with pytest.raises(jwt.InvalidAlgorithmError):
        verify_token(sign(impostor, good_claims(), kid=key.kid), jwks, audience=AUDIENCE)


def test_token_without_kid_is_rejected(signing):
    key, jwks = signing
    token = sign(key, good_claims())
    assert "kid" not in jwt.get_unverified_header(token)
    with pytest.raises(jwt.InvalidTokenError, match="kid"):
        verify_token(token, jwks, audience=AUDIENCE)


@pytest.mark.parametrize("kid", ["unknown-kid", ""])
def test_token_with_an_unknown_kid_is_rejected(signing, kid):
    key, jwks = signing
    with pytest.raises(jwt.InvalidTokenError, match="unknown kid"):
        verify_token(sign(key, good_claims(), kid=kid), jwks, audience=AUDIENCE)


def test_token_with_a_non_string_kid_is_rejected(signing):
    key, jwks = signing
    with pytest.raises(jwt.InvalidTokenError, match="(?i)kid|key id"):
        verify_token(sign(key, good_claims(), kid=123), jwks, audience=AUDIENCE)


@pytest.mark.parametrize("audience", ["someone-else", ["someone-else"]])
def test_wrong_audience_is_rejected(signing, audience):
    key, jwks = signing
    with pytest.raises(jwt.InvalidAudienceError):
        verify_token(sign(key, good_claims(aud=audience), kid=key.kid), jwks, audience=AUDIENCE)


@pytest.mark.parametrize("claim", ["exp", "iat", "sub"])
def test_missing_required_claim_is_rejected(signing, claim):
    key, jwks = signing
    claims = good_claims()
    del claims[claim]
    with pytest.raises(jwt.MissingRequiredClaimError):
        verify_token(sign(key, claims, kid=key.kid), jwks, audience=AUDIENCE)


def test_nbf_is_optional_as_on_the_server_but_checked_when_present(signing):
    """Dex's tokens carry no nbf; Temporal accepts that and checks nbf only when it is there."""
    key, jwks = signing
    claims = good_claims()
    del claims["nbf"]
    assert verify_token(sign(key, claims, kid=key.kid), jwks, audience=AUDIENCE)["sub"] == claims["sub"]
    with pytest.raises(jwt.ImmatureSignatureError):
        verify_token(sign(key, good_claims(nbf=claims["iat"] + 3600), kid=key.kid), jwks, audience=AUDIENCE)


def _hs256(secret: bytes, header: dict, claims: dict) -> str:
    signing_input = f"{b64url_json(header)}.{b64url_json(claims)}".encode()
    return signing_input.decode() + "." + b64url(hmac.new(secret, signing_input, hashlib.sha256).digest())


@pytest.mark.parametrize("bundle_name", ["ec_bundle", "rsa_bundle"])
def test_hs256_with_the_public_key_as_secret_is_rejected(bundle_name, request):
    """Algorithm confusion: HMAC keyed with the public key (PEM, or the JWK JSON) must not pass."""
    bundle = request.getfixturevalue(bundle_name)
    jwks = bundle.jwks()
    jwk = jwks["keys"][0]
    public_key = jwt.PyJWK(jwk).key
    pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = {"alg": "HS256", "kid": jwk["kid"], "typ": "JWT"}
    for secret in (pem, pem.strip(), json.dumps(jwk).encode()):
        forged = _hs256(secret, header, good_claims(permissions=["temporal-system:admin"]))
        with pytest.raises(jwt.InvalidAlgorithmError):
            verify_token(forged, jwks, audience=AUDIENCE)


def test_garbage_is_a_jwt_error():
    with pytest.raises(jwt.PyJWTError):
        verify_token("not.a.jwt", {"keys": []}, audience=AUDIENCE)


def test_check_expiry_reports_rsa_token_under_an_ec_kid_instead_of_crashing(signing):
    """bootstrap.ops.expiry.jwks_problem had the same TypeError as verify_token (check-expiry crashed)."""
    from bootstrap.ops.expiry import Item, Jwks, jwks_problem

    key, jwks = signing
    forged = sign(SigningKey.generate("RS256"), good_claims(), kid=key.kid)
    published = Jwks("https://jwks:8443/jwks.json", {k["kid"]: k for k in jwks["keys"]})
    problem = jwks_problem(Item("tokens/worker.jwt", "token", kid=key.kid, encoded=forged), published)
    assert problem and "does not verify" in problem
    good = sign(key, good_claims(), kid=key.kid)
    assert jwks_problem(Item("tokens/worker.jwt", "token", kid=key.kid, encoded=good), published) is None


# --------------------------------------------------------------------------- aligned with Temporal's JWT verifier


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("kind", ["string", "float", "bool"])
def test_time_claims_must_be_integers(signing, claim, kind):
    """PyJWT alone accepts "1767225600" and 1767225600.5; Temporal's verifier does not."""
    key, jwks = signing
    value = good_claims()[claim]
    bad = {"string": str(value), "float": value + 0.5, "bool": True}[kind]
    with pytest.raises(jwt.PyJWTError):
        verify_token(sign(key, good_claims(**{claim: bad}), kid=key.kid), jwks, audience=AUDIENCE)
    assert verify_token(sign(key, good_claims(), kid=key.kid), jwks, audience=AUDIENCE)["sub"]


def test_issuer_is_checked_when_given(signing):
    key, jwks = signing
    foreign = sign(key, good_claims(iss="https://elsewhere.example"), kid=key.kid)
    assert verify_token(foreign, jwks, audience=AUDIENCE)["iss"] == "https://elsewhere.example"
    with pytest.raises(jwt.InvalidIssuerError):
        verify_token(foreign, jwks, audience=AUDIENCE, issuers=("temporal-bundle",))
    claims = good_claims()
    del claims["iss"]
    with pytest.raises(jwt.MissingRequiredClaimError):
        verify_token(sign(key, claims, kid=key.kid), jwks, audience=AUDIENCE, issuers=("temporal-bundle",))
    good = sign(key, good_claims(), kid=key.kid)
    assert verify_token(good, jwks, audience=AUDIENCE, issuers=("other", "temporal-bundle"))["iss"] == "temporal-bundle"


def test_only_es256_and_rs256_headers_are_accepted(signing):
    key, jwks = signing
    hs = jwt.encode(good_claims(), "secret-secret-secret-secret-32by", algorithm="HS256", headers={"kid": key.kid})
    with pytest.raises(jwt.InvalidAlgorithmError):
        verify_token(hs, jwks, audience=AUDIENCE)
