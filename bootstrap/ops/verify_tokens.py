"""verify's token attacks: the tokens TOKEN_ATTACKS names, minted with the active signing key or
forged from one valid token, in memory only, and each one's outcome on the frontend."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import timedelta

import jwt

from ..core.config import BundleConfig
from ..core.pki import utcnow
from ..core.tokens import SigningKey, mint_token
from ..core.verify_plan import ACCEPTED, DENIED, TOKEN_ATTACKS
from ..store import Layout
from .plan import active_signing_key, load_published_keys

TOKEN_CALL_TIMEOUT = timedelta(seconds=15)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64_json(doc: dict) -> str:
    return _b64(json.dumps(doc, separators=(",", ":")).encode())


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def forged_tokens(config: BundleConfig, valid: str) -> dict[str, str | None]:
    """The attacks no signing key is needed for, built from one valid token: its claims re-signed
    by a stranger's key (under the stranger's kid, and under the valid kid), unsigned, or with the
    payload escalated to temporal-system:admin under the valid signature."""
    header, payload, signature = valid.split(".")
    head, claims = json.loads(_unb64(header)), json.loads(_unb64(payload))
    escalated = {**claims, config.oidc.permissions_claim: ["temporal-system:admin"]}
    stranger = SigningKey.generate(head["alg"])
    return {
        "valid": valid,
        "no token": None,
        "unknown kid": jwt.encode(claims, stranger.private_key, algorithm=stranger.algorithm,
                                  headers={"kid": stranger.kid, "typ": "JWT"}),
        "forged signature": jwt.encode(escalated, stranger.private_key, algorithm=stranger.algorithm,
                                       headers={"kid": head.get("kid"), "typ": "JWT"}),
        "alg none": f"{_b64_json({'alg': 'none', 'typ': 'JWT', 'kid': head.get('kid')})}.{_b64_json(escalated)}.",
        "tampered": f"{header}.{_b64_json(escalated)}.{signature}",
    }


def attack_tokens(config: BundleConfig, layout: Layout, namespace: str) -> dict[str, str | None]:
    """TOKEN_ATTACKS' tokens: minted with the active signing key or forged; in memory only."""
    active = active_signing_key(layout, load_published_keys(layout))
    read = [f"{namespace}:read"]

    def signed(permissions, key=active, audience=config.jwt.audience, now=None) -> str:
        return mint_token(key, role="verify", permissions=permissions, issuer=config.jwt.issuer, audience=audience,
                          lifetime=timedelta(minutes=10), now=now, claim=config.oidc.permissions_claim).encoded

    valid = signed(read)
    claims = json.loads(_unb64(valid.split(".")[1]))
    tokens = {
        **forged_tokens(config, valid),
        "expired": signed(read, now=utcnow() - timedelta(hours=1)),
        "no kid": jwt.encode(claims, active.private_key, algorithm=active.algorithm),
        "wrong audience": signed(read, audience=f"not-{config.jwt.audience}"),
        "wrong namespace": signed([f"verify-not-{namespace}:admin"]),
    }
    assert set(tokens) == set(TOKEN_ATTACKS)
    return tokens


def role_attack_tokens(config: BundleConfig, valid: str) -> dict[str, str | None]:
    """Without the signing key: the forgeries, and the role's valid token for "wrong namespace"
    (token_rows asks it for a namespace the token names no permission for)."""
    return {**forged_tokens(config, valid), "wrong namespace": valid}


@dataclass(frozen=True)
class Frontend:
    address: str
    server_name: str
    roots: bytes
    cert: bytes
    key: bytes


async def token_outcome(frontend: Frontend, token: str | None, namespace: str) -> str:
    """accepted | denied: <status> | error: ...: DescribeNamespace with a client-domain certificate."""
    from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
    from temporalio.client import Client
    from temporalio.service import RPCError, RPCStatusCode, TLSConfig

    tls = TLSConfig(server_root_ca_cert=frontend.roots, client_cert=frontend.cert, client_private_key=frontend.key,
                    domain=frontend.server_name)
    try:
        client = await Client.connect(frontend.address, namespace=namespace, tls=tls, api_key=token,
                                      connect_timeout=TOKEN_CALL_TIMEOUT)
    except RuntimeError as exc:  # the SDK's connect error: its text, never the token
        text = str(exc)
        if any(word in text for word in ("PermissionDenied", "Unauthenticated", "Request unauthorized")):
            return f"{DENIED}: at connect"
        return f"error: connect: {text.splitlines()[0][:160] if text else type(exc).__name__}"
    try:
        await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace=namespace),
                                                         timeout=TOKEN_CALL_TIMEOUT)
        return ACCEPTED
    except RPCError as exc:
        if exc.status in (RPCStatusCode.PERMISSION_DENIED, RPCStatusCode.UNAUTHENTICATED):
            return f"{DENIED}: {exc.status.name}"
        return f"error: {exc.status.name}: {exc.message[:160]}"
