"""Plan the role tokens in tokens/ and the registrar's system token."""

from __future__ import annotations

from datetime import datetime

from ...core.config import BundleConfig
from ...errors import BundleError
from ...store import KEY_MODE, Action, Layout, Skip, Write, read_optional
from ...core.tokens import PERMISSIONS_CLAIM, SigningKey, Token, decode_unverified, mint_token
from .force import FORCE_HINT


def token_needs_refresh(token_text: str, config: BundleConfig, role, active_kid: str, now: datetime) -> str | None:
    """Why a token on disk must be re-minted, or None if it is still good."""
    header, claims = decode_unverified(token_text)
    if header.get("kid") != active_kid:
        return "signed by a retired or other key"
    wanted = list(role.permissions)
    if any(claims.get(name) != wanted for name in ("permissions", PERMISSIONS_CLAIM, config.oidc.permissions_claim)):
        return "permissions differ from the config"
    if claims.get("aud") != config.jwt.audience or claims.get("iss") != config.jwt.issuer:
        return "issuer or audience differs from the config"
    issued, expires = claims.get("iat"), claims.get("exp")
    if not isinstance(issued, int) or not isinstance(expires, int):
        return "no iat/exp"
    if expires - issued != int(role.token_lifetime.total_seconds()):
        return "lifetime differs from the config"
    # Refresh at two thirds of the lifetime, so a client re-reading the file never holds an
    # expired token even if a refresh run is missed.
    if now.timestamp() >= issued + (expires - issued) * 2 / 3:
        return "past two thirds of its lifetime"
    return None


def plan_tokens(
    config: BundleConfig, layout: Layout, key: SigningKey, force: bool, now: datetime, roles=None
) -> tuple[list[Action], list[Token]]:
    actions: list[Action] = []
    minted: list[Token] = []
    for role in roles or config.roles:
        action, token = _plan_token(config, layout.token(role.name), role, key, force, now)
        actions.append(action)
        minted += [token] if token else []
    return actions, minted


def plan_registrar_token(config: BundleConfig, layout: Layout, key: SigningKey, force: bool, now: datetime) -> list[Action]:
    """The system token of the namespace-registration job, kept apart from tokens/ (the job
    mounts registrar/ only). Fresh at every `init`, which runs before the job does."""
    action, _ = _plan_token(config, layout.registrar_token, config.role("system"), key, force, now)
    return [action]


def _plan_token(config: BundleConfig, path, role, key: SigningKey, force: bool, now: datetime) -> tuple[Action, Token | None]:
    existing = read_optional(path)
    reason = "created"
    if existing is not None:
        try:
            reason = token_needs_refresh(existing.decode("ascii").strip(), config, role, key.kid, now)
        except (BundleError, UnicodeDecodeError):
            if not force:
                raise BundleError(f"{path} is not a readable JWT; {FORCE_HINT}") from None
            reason = "replaced (--force)"
        if reason is None and not force:
            return Skip(path), None
        reason = f"re-minted: {reason}" if reason else "re-minted (--force)"
    token = mint_token(
        key,
        role=role.name,
        permissions=role.permissions,
        issuer=config.jwt.issuer,
        audience=config.jwt.audience,
        lifetime=role.token_lifetime,
        now=now,
        claim=config.oidc.permissions_claim,
    )
    return Write(path, (token.encoded + "\n").encode(), KEY_MODE, reason), token
