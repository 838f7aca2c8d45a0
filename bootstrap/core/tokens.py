"""JWT signing keys, the JWKS document and role tokens, in the exact shape Temporal's default
claim mapper reads: a `kid` header, a string `sub`, and a `permissions` array of
"<namespace>:<role>" strings. Pure: nothing here touches the disk.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ..errors import BundleError
from .claims import PERMISSIONS_CLAIM
from .pki import generate_key, load_private_key, private_key_pem, utcnow

ALGORITHM_KEYS = {"ES256": "ecdsa-p256", "RS256": "rsa-2048"}
# The members RFC 7638 hashes, per key type, in lexicographic order.
THUMBPRINT_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n")}


def _public_jwk(public_key) -> dict:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return jwt.algorithms.ECAlgorithm.to_jwk(public_key, as_dict=True)
    return jwt.algorithms.RSAAlgorithm.to_jwk(public_key, as_dict=True)


def jwk_thumbprint(jwk: dict) -> str:
    """RFC 7638: SHA-256 over the required members, sorted, without whitespace, base64url."""
    members = {name: jwk[name] for name in THUMBPRINT_MEMBERS[jwk["kty"]]}
    digest = hashlib.sha256(json.dumps(members, separators=(",", ":"), sort_keys=True).encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@dataclass(frozen=True)
class SigningKey:
    private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    algorithm: str

    @classmethod
    def generate(cls, algorithm: str = "ES256", new_key=generate_key) -> "SigningKey":
        """`new_key(key_algorithm)` makes the key: by default here, or inside a PKCS#11 token."""
        if algorithm not in ALGORITHM_KEYS:
            raise BundleError(f"unsupported JWT algorithm {algorithm!r} (Temporal accepts ES256 and RS256)")
        return cls(new_key(ALGORITHM_KEYS[algorithm]), algorithm)

    @classmethod
    def from_pem(cls, pem: bytes, what: str = "signing key") -> "SigningKey":
        key = load_private_key(pem, what)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            if key.curve.name != "secp256r1":
                raise BundleError(f"{what}: ES256 needs a P-256 key, found {key.curve.name}")
            return cls(key, "ES256")
        if key.key_size < 2048:
            raise BundleError(f"{what}: RSA signing keys must be at least 2048 bits")
        return cls(key, "RS256")

    def private_pem(self) -> bytes:
        return private_key_pem(self.private_key)

    @property
    def kid(self) -> str:
        return jwk_thumbprint(_public_jwk(self.private_key.public_key()))

    def public_jwk(self) -> dict:
        jwk = _public_jwk(self.private_key.public_key())
        return {**jwk, "kid": jwk_thumbprint(jwk), "use": "sig", "alg": self.algorithm}


def jwks_document(keys) -> dict:
    """The JWKS for a set of signing keys, sorted by kid so the bytes are stable across runs."""
    return {"keys": sorted((k.public_jwk() for k in keys), key=lambda j: j["kid"])}


def jwks_bytes(keys) -> bytes:
    return (json.dumps(jwks_document(keys), indent=2, sort_keys=True) + "\n").encode()


@dataclass(frozen=True)
class Token:
    role: str
    encoded: str
    claims: dict
    kid: str

    @property
    def expires_at(self) -> datetime:
        return datetime.fromtimestamp(self.claims["exp"], tz=utcnow().tzinfo)

    @property
    def issued_at(self) -> datetime:
        return datetime.fromtimestamp(self.claims["iat"], tz=utcnow().tzinfo)


def mint_token(
    key: SigningKey,
    *,
    role: str,
    permissions: tuple[str, ...] | list[str],
    issuer: str,
    audience: str,
    lifetime: timedelta,
    subject: str | None = None,
    now: datetime | None = None,
    claim: str = PERMISSIONS_CLAIM,
) -> Token:
    now = now or utcnow()
    issued = int(now.timestamp())
    claims = {
        "sub": subject or f"temporal-bundle:{role}",
        "iss": issuer,
        "aud": audience,
        "iat": issued,
        "nbf": issued,
        "exp": issued + int(lifetime.total_seconds()),
        "jti": str(uuid.uuid4()),
        "permissions": list(permissions),
        PERMISSIONS_CLAIM: list(permissions),
        # The server reads one claim (permissionsClaimName): an external issuer's may be another.
        claim: list(permissions),
    }
    encoded = jwt.encode(claims, key.private_key, algorithm=key.algorithm, headers={"kid": key.kid, "typ": "JWT"})
    return Token(role, encoded, claims, key.kid)


def jwk_algorithm(jwk: dict) -> str:
    """The one algorithm a published key may verify with. Verifying only with it turns RS256
    claimed under an EC key's kid into InvalidAlgorithmError (PyJWT would raise a bare TypeError)."""
    alg, kty = jwk.get("alg"), jwk.get("kty")
    if alg:  # a JWKS is the publisher's JSON: any member may be of any type
        return alg if isinstance(alg, str) else ""
    return {"EC": "ES256", "RSA": "RS256"}.get(kty, "") if isinstance(kty, str) else ""


ALGORITHMS = tuple(ALGORITHM_KEYS)


@functools.lru_cache(maxsize=64)
def _public_key(jwk_json: str, algorithm: str):
    """Loading a key from its JWK costs more than the signature check; a server verifies with the
    same few keys all day."""
    return jwt.PyJWK(json.loads(jwk_json), algorithm).key
NUMERIC_CLAIMS = ("exp", "nbf", "iat")


def verify_token(encoded: str, jwks: dict, *, audience: str, issuers: tuple[str, ...] = (), leeway: int = 0) -> dict:
    """Verify like Temporal does: a `kid` found in the JWKS, RS256/ES256 only, whole-second
    numeric exp/iat (and nbf when present) (PyJWT alone would take "123" or 1.5), audience, and the issuer when
    `issuers` is given.

    Raises jwt.PyJWTError subclasses on any failure.
    """
    header = jwt.get_unverified_header(encoded)
    kid = header.get("kid")
    if not isinstance(kid, str):
        raise jwt.InvalidTokenError('malformed token - no "kid" header')
    if header.get("alg") not in ALGORITHMS:
        raise jwt.InvalidAlgorithmError("only ES256 and RS256 tokens are accepted")
    match = [k for k in jwks.get("keys", []) if isinstance(k, dict) and k.get("kid") == kid]
    if not match:
        raise jwt.InvalidTokenError(f"unknown kid {kid!r}")
    algorithm = jwk_algorithm(match[0])
    if algorithm not in ALGORITHM_KEYS:
        raise jwt.InvalidAlgorithmError(f"key {kid!r} is for {algorithm or 'an unknown algorithm'}, not ES256 or RS256")
    public_key = _public_key(json.dumps(match[0], sort_keys=True), algorithm)
    # nbf is checked when present, as the server does: Dex's tokens carry none.
    options = {"require": ["exp", "iat", "sub", *(["iss"] if issuers else [])]}
    claims = jwt.decode(
        encoded, public_key, algorithms=[algorithm], audience=audience, options=options, leeway=leeway,
        issuer=list(issuers) or None,
    )
    for name in NUMERIC_CLAIMS:
        if name in claims and type(claims[name]) is not int:  # noqa: E721 (bool is an int subclass and not a time)
            raise jwt.InvalidTokenError(f"{name} must be an integer NumericDate")
    return claims


def decode_unverified(encoded: str) -> tuple[dict, dict]:
    """Header and claims without verification, for reporting (check-expiry)."""
    try:
        return jwt.get_unverified_header(encoded), jwt.decode(encoded, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise BundleError(f"not a readable JWT: {exc}") from None


__all__ = [
    "SigningKey",
    "Token",
    "decode_unverified",
    "jwk_thumbprint",
    "jwks_bytes",
    "jwks_document",
    "mint_token",
    "verify_token",
]
