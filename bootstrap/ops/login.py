"""Terminal login for humans: OIDC authorization code + PKCE (S256) with a loopback redirect
(RFC 8252) against the bundle's Dex or a company IdP, then a Temporal CLI profile holding the token.

    discover the issuer -> listen on 127.0.0.1:<port> -> print (and maybe open) the authorization URL
    -> ONE request on the listener (state checked), listener closed -> code + verifier at the token
    endpoint -> ID token verified (JWKS, iss, aud, nonce, exp, azp) -> the token the server takes
    (the ID token when its aud holds the server's audience, else the access token when it does),
    or, with an exchange URL, the bundle token the RFC 8693 exchange gives for the ID token
    -> the profile (0600) and the session (refresh token, 0600) written atomically, side by side.

Nothing is written before every check has passed; no token, code or verifier is ever printed.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path

from ..core.cli_login import (CROSS_CLIENT_SCOPE, CliProfile, authorization_url, holds_profile, is_stale, merge_profile,
                              new_pkce, new_secret, redirect_uri, remove_profile)
from ..errors import BundleError
from ..store import KEY_MODE, Layout, read_optional, remove, write_atomic
from .login_callback import CallbackListener
from .login_issuer import (Provider, discover, exchange, fetch_jwks, oauth_error, request_json, server_token,
                           tls_context, verify_id_token)
from .oidc import CLI_CLIENT_ID, issuer_ca_path

SESSION_VERSION = 1


def default_cli_config() -> Path:
    """Where temporal CLI 1.9.1 reads profiles: TEMPORAL_CONFIG_FILE, else Go's os.UserConfigDir()
    (XDG_CONFIG_HOME, else ~/.config) + temporalio/temporal.toml (envconfig v1.0.2)."""
    if os.environ.get("TEMPORAL_CONFIG_FILE"):
        return Path(os.environ["TEMPORAL_CONFIG_FILE"])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "temporalio" / "temporal.toml"


def session_path(cli_config: Path, profile: str) -> Path:
    """The refresh token and what a refresh needs, beside the CLI config, 0600."""
    return cli_config.with_name(f"temporal-bundle-login.{profile}.json")


# --------------------------------------------------------------------------- login, refresh, logout


@dataclass(frozen=True)
class Target:
    """Whom to ask and for what."""
    issuer: str
    client_id: str
    audience: str  # what the server checks (jwt.audience, or oidc.external.client_id)
    scopes: tuple[str, ...]
    cafiles: tuple[str, ...] = ()  # extra roots for the issuer and the exchange (absolute paths)
    exchange_url: str = ""
    connector: str = ""  # Dex's connector_id: go straight to that login (ldap, github...)


@dataclass(frozen=True)
class Session:
    """What `login --refresh` needs, kept 0600 beside the profile (the refresh token among it)."""
    target: Target
    profile: CliProfile  # with the current token
    refresh_token: str
    nonce: str
    subject: str
    expires_at: int
    email: str = ""
    version: int = SESSION_VERSION

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self), indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes, where: Path) -> "Session":
        try:
            doc = json.loads(data)
            target = Target(**{**doc["target"], "scopes": tuple(doc["target"]["scopes"]),
                               "cafiles": tuple(doc["target"]["cafiles"])})
            return cls(**{**doc, "target": target, "profile": CliProfile(**doc["profile"])})
        except (ValueError, KeyError, TypeError):
            raise BundleError(f"{where} is not a login session this version wrote; run logout, then login") from None


@dataclass
class Outcome:
    session: Session
    written: list[Path] = field(default_factory=list)
    refreshed: bool = False


def load_session(cli_config: Path, profile: str) -> Session | None:
    path = session_path(cli_config, profile)
    data = read_optional(path)
    return None if data is None else Session.from_json(data, path)


def login(target: Target, profile: CliProfile, cli_config: Path, *, announce, port: int = 0,
          timeout: float = 300.0) -> Outcome:
    """The browser login. `announce(url)` shows the URL (and may open a browser)."""
    context = tls_context(tuple(Path(p) for p in target.cafiles))
    provider = discover(target.issuer, context)
    _check_writable(cli_config, profile)  # refuse a foreign profile before the user logs in
    pkce, state, nonce = new_pkce(), new_secret(), new_secret()
    listener = CallbackListener(state, port)
    try:
        url = authorization_url(provider.authorization_endpoint, client_id=target.client_id,
                                redirect=redirect_uri(listener.port), scopes=target.scopes, state=state, nonce=nonce,
                                challenge=pkce.challenge, connector=target.connector)
        announce(url)
        code = listener.wait(timeout)
    finally:
        listener.close()
    status, tokens = request_json(provider.token_endpoint, context, {
        "grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri(listener.port),
        "client_id": target.client_id, "code_verifier": pkce.verifier})
    if status != 200:
        raise BundleError(f"the identity provider refused the code (HTTP {status}, {oauth_error(tokens)})")
    return _finish(target, profile, cli_config, context, provider, tokens, nonce, subject="")


def refresh(cli_config: Path, profile_name: str) -> Outcome:
    session = load_session(cli_config, profile_name)
    if session is None:
        raise BundleError(f"no login session for profile {profile_name} beside {cli_config}; run temporal-bundle login")
    if not session.refresh_token:
        raise BundleError("the identity provider gave this session no refresh token; run temporal-bundle login")
    target = session.target
    context = tls_context(tuple(Path(p) for p in target.cafiles))
    provider = discover(target.issuer, context)
    status, tokens = request_json(provider.token_endpoint, context, {
        "grant_type": "refresh_token", "refresh_token": session.refresh_token, "client_id": target.client_id})
    if status != 200:
        raise BundleError(f"the identity provider refused the refresh (HTTP {status}, {oauth_error(tokens)}); "
                          "run temporal-bundle login")
    tokens.setdefault("refresh_token", session.refresh_token)  # an IdP that does not rotate keeps the old one
    outcome = _finish(target, session.profile, cli_config, context, provider, tokens, session.nonce,
                      subject=session.subject)
    outcome.refreshed = True
    return outcome


def _finish(target: Target, profile: CliProfile, cli_config: Path, context, provider: Provider, tokens: dict, nonce: str,
            subject: str) -> Outcome:
    jwks = fetch_jwks(provider, context)
    claims = verify_id_token(tokens.get("id_token"), jwks, issuer=target.issuer, client_id=target.client_id,
                             nonce=nonce, subject=subject)
    if target.exchange_url:
        token, expires_at = exchange(target.exchange_url, tokens["id_token"], target.audience, context)
    else:
        token, expires_at = server_token(tokens, claims, jwks, issuer=target.issuer, audience=target.audience)
    refresh_token = tokens.get("refresh_token") or ""
    if not isinstance(refresh_token, str):
        raise BundleError("the identity provider's refresh_token is not a string")
    email = claims.get("email") if isinstance(claims.get("email"), str) else ""
    session = Session(target, CliProfile(**{**asdict(profile), "api_key": token}), refresh_token, nonce,
                      claims["sub"], expires_at, email)
    return Outcome(session, save(cli_config, session))


def _check_writable(cli_config: Path, profile: CliProfile) -> str:
    """The config text with our profile in (validated), before anything is written or asked."""
    data = read_optional(cli_config)
    try:
        existing = None if data is None else data.decode("utf-8")
    except UnicodeDecodeError:
        raise BundleError(f"{cli_config} is not UTF-8 text") from None
    probe = CliProfile(**{**asdict(profile), "api_key": profile.api_key or "a.b.c"})
    return merge_profile(existing, probe)


def save(cli_config: Path, session: Session) -> list[Path]:
    text = _check_writable(cli_config, session.profile)
    state = session_path(cli_config, session.profile.name)
    write_atomic(state, session.to_json(), KEY_MODE)
    write_atomic(cli_config, text.encode(), KEY_MODE)  # it holds a token now: 0600 whatever it was
    return [cli_config, state]


@dataclass
class Logout:
    removed: list[Path]
    revoked: str  # what happened to the refresh token at the issuer


def logout(cli_config: Path, profile_name: str) -> Logout:
    session_file = session_path(cli_config, profile_name)
    try:
        session = load_session(cli_config, profile_name)
    except BundleError:
        session = None  # unreadable: still removed below
    data = read_optional(cli_config)
    try:
        text = None if data is None else data.decode("utf-8")
    except UnicodeDecodeError:
        raise BundleError(f"{cli_config} is not UTF-8 text; nothing removed") from None
    removed: list[Path] = []
    revoked = "no refresh token was held"
    if session is not None and session.refresh_token:
        revoked = revoke(session)
    if text is not None and holds_profile(text, profile_name):
        rest = remove_profile(text, profile_name)
        if rest is None:
            remove(cli_config)
        else:
            write_atomic(cli_config, rest.encode(), KEY_MODE)
        removed.append(cli_config)
    if session_file.exists():
        remove(session_file)
        removed.append(session_file)
    return Logout(removed, revoked)


def revoke(session: Session) -> str:
    """RFC 7009 where the issuer offers it; Dex v2.45.1 does not (no revocation endpoint)."""
    target = session.target
    try:
        context = tls_context(tuple(Path(p) for p in target.cafiles))
        provider = discover(target.issuer, context)
    except BundleError as exc:
        return f"not revoked: the issuer is unreachable ({exc}); the deleted refresh token stays valid there until it expires"
    if not provider.revocation_endpoint:
        return ("not revoked: the issuer offers no revocation endpoint (Dex v2.45.1 has none); the refresh token was "
                "deleted here and stays valid at the issuer until it expires")
    try:
        status, doc = request_json(provider.revocation_endpoint, context, {
            "token": session.refresh_token, "token_type_hint": "refresh_token", "client_id": target.client_id})
    except BundleError as exc:
        return f"not revoked: {exc}"
    return "revoked at the issuer" if status == 200 else f"not revoked: HTTP {status} ({oauth_error(doc)})"


# --------------------------------------------------------------------------- what to ask for, from bundle.yaml


DEX_SCOPES = ("openid", "profile", "email", "groups", "offline_access")


@dataclass(frozen=True)
class Options:
    """What the command line says; "" / None means: take it from bundle.yaml (or the default)."""
    profile: str
    issuer: str = ""
    client_id: str = ""
    audience: str = ""
    ca_files: tuple[str, ...] = ()
    address: str = ""
    server_name: str = ""
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    cert_role: str = "client"
    namespace: str = ""
    exchange_url: str = ""
    connector: str = ""


def resolve(options: Options, config, bundle_dir: Path | None) -> tuple[Target, CliProfile]:
    """The login target and the profile (without its token) from the options, falling back on
    bundle.yaml (`config`, None when there is none) and the bundle directory's files."""
    layout = Layout(bundle_dir) if bundle_dir else None
    external = config.oidc.external if config else None
    issuer = options.issuer or (config.oidc.login_issuer if config and config.oidc.ui_login else "")
    if not issuer:
        raise BundleError("no issuer: give --issuer, or a bundle.yaml (--config) with the embedded Dex or oidc.external")
    audience = options.audience or (config.jwt.audience if config else "")
    if not audience:
        raise BundleError("no audience: give --audience (the server's jwt.audience), or a bundle.yaml (--config)")
    client_id = options.client_id or CLI_CLIENT_ID
    if external is not None:
        scopes = tuple(dict.fromkeys((*external.scopes, "offline_access")))
    else:
        # aud then holds the server's audience (and ours): the frontend and an exchange checking
        # jwt.audience both take the ID token.
        cross = (f"{CROSS_CLIENT_SCOPE}{audience}",) if audience != client_id else ()
        scopes = DEX_SCOPES + cross
    cafiles = list(options.ca_files)
    if not cafiles and layout is not None:
        cafiles = [str(p) for p in (layout.trust_bundle, issuer_ca_path(layout)) if p.is_file()]
    for path in cafiles:
        if not Path(path).is_file():
            raise BundleError(f"CA file {path} not found")

    def bundle_file(given: str, relative: Path | None, what: str, flag: str) -> str:
        path = Path(given) if given else relative
        if path is None:
            raise BundleError(f"no {what}: give {flag}, or the bundle directory (--out)")
        if not path.is_file():
            raise BundleError(f"{what} {path} not found (give {flag})")
        return str(path.resolve())

    cert, key = layout.leaf("clients", options.cert_role) if layout else (None, None)
    profile = CliProfile(
        name=options.profile,
        address=options.address or (f"localhost:{config.network.frontend_port}" if config else ""),
        api_key="",
        ca_path=bundle_file(options.tls_ca, layout.trust_bundle if layout else None, "server CA", "--tls-ca"),
        cert_path=bundle_file(options.tls_cert, cert, "client certificate", "--tls-cert"),
        key_path=bundle_file(options.tls_key, key, "client key", "--tls-key"),
        server_name=options.server_name or (config.network.frontend_host if config else ""),
        namespace=options.namespace,
    )
    if not profile.address:
        raise BundleError("no frontend address: give --address host:port, or a bundle.yaml (--config)")
    # With oidc.connectors the frontend does not trust Dex's keys (an upstream directory's groups are
    # not the bundle's): a person's Dex token is good only at the token exchange, which maps them.
    exchange_url = options.exchange_url or (
        f"https://localhost:{config.workload_identity.port}/token" if config and config.oidc.login_exchange else "")
    target = Target(issuer=issuer, client_id=client_id, audience=audience, scopes=scopes,
                    cafiles=tuple(str(Path(p).resolve()) for p in cafiles), exchange_url=exchange_url,
                    connector=options.connector)
    return target, profile


def current(session: Session | None, target: Target, profile: CliProfile, cli_config: Path) -> Session | None:
    """The session, if it is the one these options would make and its profile is still in place."""
    if session is None or session.target != target:
        return None
    if asdict(session.profile) != {**asdict(profile), "api_key": session.profile.api_key}:
        return None
    data = read_optional(cli_config)
    if data is None or not holds_profile(data.decode("utf-8", errors="replace"), profile.name):
        return None
    return session


def needs_refresh(session: Session, window: timedelta) -> bool:
    return is_stale(expires_at=session.expires_at, now=int(time.time()), window=window)
