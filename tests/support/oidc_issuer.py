"""A STAND-IN for a company identity provider (Okta, Keycloak, Entra ID...), for tests: NOT one.

It serves what the Temporal server, the UI and the codec server read from an OIDC issuer, over
HTTPS with a CA of its own (a private company CA): the discovery document and the JWKS, open to
anyone as real providers serve them, and it mints tokens shaped like an OIDC ID token (iss, sub,
aud = the client id, iat, exp, a kid header, RS256) with the user's groups in a claim of the
operator's choosing. Built on tests/support/kube_issuer.py's HTTPS issuer.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import jwt

from bootstrap.core.pki import utcnow
from bootstrap.core.tokens import SigningKey
from tests.support.kube_issuer import JWKS_PATH, KubeIssuer


@dataclass
class CompanyIssuer(KubeIssuer):
    discovery_token: str = ""

    @property
    def jwks_uri(self) -> str:
        return f"{self.issuer}{JWKS_PATH}"

    def _authorized(self, request) -> bool:
        self.requests.append(request.path)
        return True  # a provider's discovery and keys are public

    def user_token(self, groups: list[str], *, audience: str, claim: str = "groups", lifetime: int = 300,
                   key: SigningKey | None = None, issuer: str | None = None, subject: str = "ana") -> str:
        key = key or self.keys[0]
        now = int(utcnow().timestamp())
        claims = {"iss": issuer or self.issuer, "sub": subject, "aud": audience, "iat": now, "nbf": now,
                  "exp": now + lifetime, "jti": str(uuid.uuid4()), "email": f"{subject}@example.com", claim: groups}
        return jwt.encode(claims, key.private_key, algorithm="RS256", headers={"alg": "RS256", "kid": key.kid})
