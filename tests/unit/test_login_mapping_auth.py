"""The codec server's (and the key service's) token check applies oidc.groups to Dex's tokens:
what they may decrypt or fetch is the mapped permissions, never the raw group names."""

from __future__ import annotations

import asyncio
import base64
import time

import jwt

from bootstrap.core.config import parse_config
from bootstrap.core.login_groups import LoginMapping
from bootstrap.core.permissions import grants, role_for
from bootstrap.core.tokens import SigningKey, mint_token
from bootstrap.servers.auth import Authenticator

NAMESPACES = [{"name": "default"}, {"name": "payments"}]
LDAP = {"type": "ldap", "id": "ldap", "config": {
    "host": "ldap.example.com:636", "userSearch": {"baseDN": "ou=people,dc=example,dc=com", "username": "uid",
                                                  "idAttr": "uid", "emailAttr": "mail"}}}
DEX = "https://auth.localhost:5556/dex"


class KeySet:
    def __init__(self, *keys):
        self.doc = {"keys": [k.public_jwk() for k in keys]}

    async def key_set(self, kid=None):
        return self.doc


def dex_sub(user: str, connector: str) -> str:
    raw = bytes([10, len(user)]) + user.encode() + bytes([18, len(connector)]) + connector.encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def dex_token(key: SigningKey, groups: list[str], user: str = "alice") -> str:
    now = int(time.time())
    claims = {"iss": DEX, "sub": dex_sub(user, "ldap"), "aud": "temporal", "iat": now, "exp": now + 300,
              "email": f"{user}@example.com", "groups": groups}
    return jwt.encode(claims, key.private_key, algorithm=key.algorithm, headers={"kid": key.kid})


def authenticator(dex_key, bundle_key):
    config = parse_config({"namespaces": NAMESPACES, "oidc": {
        "groups": {"admins": ["temporal-system:admin"], "payments-oncall": ["payments:write"]}, "connectors": [LDAP]}})
    return Authenticator(KeySet(dex_key, bundle_key), "temporal", (config.jwt.issuer, DEX),
                         login=LoginMapping(DEX, config.oidc)), config


def test_dex_tokens_carry_mapped_permissions_and_bundle_tokens_are_untouched():
    dex_key, bundle_key = SigningKey.generate(), SigningKey.generate()
    auth, config = authenticator(dex_key, bundle_key)

    async def check():
        alice = await auth.claims("Bearer " + dex_token(dex_key, ["payments-oncall", "staff"]))
        assert alice["groups"] == alice["permissions"] == ["payments:write"]
        assert alice["login_groups"] == ["payments-oncall", "staff"]
        assert grants(alice, "payments", "write") and not grants(alice, "payments", "admin")
        assert role_for(alice, "default") == 0
        mallory = await auth.claims("Bearer " + dex_token(dex_key, ["payments:admin", "temporal-system:admin"], "mallory"))
        assert role_for(mallory, "payments") == 0 and role_for(mallory, "default") == 0
        role = mint_token(bundle_key, role="ops", permissions=["default:admin"], issuer=config.jwt.issuer,
                          audience="temporal", lifetime=__import__("datetime").timedelta(minutes=5)).encoded
        assert (await auth.claims("Bearer " + role))["groups"] == ["default:admin"]

    asyncio.run(check())
