"""Tokens for the server tier's attacks: minted with the cluster's own signing key (valid, expired,
for another audience, from an unknown key) or forged (a known kid over another key, alg none)."""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import jwt

from bootstrap.core.pki import utcnow
from bootstrap.core.tokens import SigningKey, mint_token

ISSUER = "temporal-bundle"


def active_signing_key(cluster) -> SigningKey:
    kid = (cluster.bundle / "private/jwt/active").read_text().strip()
    return SigningKey.from_pem((cluster.bundle / f"private/jwt/{kid}.key").read_bytes())


def token(cluster, permissions, key=None, audience="temporal", now=None, lifetime=timedelta(hours=1)) -> str:
    return mint_token(key or active_signing_key(cluster), role="test", permissions=permissions, issuer=ISSUER,
                      audience=audience, lifetime=lifetime, now=now).encoded


def _claims(permissions) -> dict:
    now = int(utcnow().timestamp())
    return {"sub": "attacker", "aud": "temporal", "iss": ISSUER, "iat": now, "nbf": now, "exp": now + 3600,
            "permissions": list(permissions), "groups": list(permissions)}


def b64(doc: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc, separators=(",", ":")).encode()).rstrip(b"=").decode()


def forged_with_known_kid(cluster, permissions) -> str:
    """The cluster's active kid over a key of the attacker's own."""
    return jwt.encode(_claims(permissions), SigningKey.generate().private_key, algorithm="ES256",
                      headers={"kid": active_signing_key(cluster).kid})


def alg_none(cluster, permissions) -> str:
    return f"{b64({'alg': 'none', 'kid': active_signing_key(cluster).kid})}.{b64(_claims(permissions))}."
