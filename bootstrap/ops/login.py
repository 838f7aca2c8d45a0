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

import html
import http.client
import json
import os
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import jwt

from ..core.cli_login import (CROSS_CLIENT_SCOPE, LOOPBACK_HOST, CliProfile, authorization_url, holds_profile, is_stale,
                              merge_profile, new_pkce, new_secret, parse_callback, redirect_uri, remove_profile, shown)
from ..core.tokens import verify_token
from ..core.workload_identity import GRANT_TYPE, JWT_TOKEN_TYPE
from ..errors import BundleError
from ..store import KEY_MODE, Layout, read_optional, remove, write_atomic
from .oidc import CLI_CLIENT_ID, issuer_ca_path

MAX_RESPONSE = 1024 * 1024
HTTP_TIMEOUT = 15.0
LEEWAY = 30  # seconds of clock skew between this machine and the issuer
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


# --------------------------------------------------------------------------- HTTPS


def tls_context(cafiles: tuple[Path, ...]) -> ssl.SSLContext:
    context = ssl.create_default_context()
    for path in cafiles:
        try:
            context.load_verify_locations(cafile=str(path))
        except (OSError, ssl.SSLError) as exc:
            raise BundleError(f"cannot load CA file {path}: {exc}") from None
    return context


def _https(url: str, what: str) -> str:
    if not isinstance(url, str) or not url.startswith("https://"):
        raise BundleError(f"{what} must be an https URL, got {shown(str(url))!r}")
    return url


def is_localhost(host: str) -> bool:
    return host == "localhost" or host.endswith(".localhost")


class _LoopbackConnection(http.client.HTTPSConnection):
    """RFC 6761: `*.localhost` is loopback. Browsers resolve it so, and the bundle's issuer is
    https://auth.localhost:5556/dex by default, but glibc without nss-myhostname does not: connect
    to 127.0.0.1 while TLS still verifies the certificate for the name."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = lambda address, *rest, **kw: socket.create_connection(
            ("127.0.0.1", address[1]), *rest, **kw)


class _LoopbackHandler(urllib.request.HTTPSHandler):
    def __init__(self, context: ssl.SSLContext):
        super().__init__(context=context)
        self.tls = context

    def https_open(self, req):
        return self.do_open(_LoopbackConnection, req, context=self.tls)


def _opener(url: str, context: ssl.SSLContext):
    if is_localhost(urllib.parse.urlsplit(url).hostname or ""):
        # No proxy either: a proxy would resolve the name its own way.
        return urllib.request.build_opener(urllib.request.ProxyHandler({}), _LoopbackHandler(context))
    return urllib.request.build_opener(urllib.request.HTTPSHandler(context=context))


def request_json(url: str, context: ssl.SSLContext, form: dict | None = None) -> tuple[int, dict]:
    """(status, JSON object) of a GET, or a form POST; an HTTP error's JSON body is returned too."""
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    headers = {"Accept": "application/json"}
    if data is not None:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    request = urllib.request.Request(url, data=data, headers=headers)
    where = urllib.parse.urlsplit(url).netloc
    try:
        with _opener(url, context).open(request, timeout=HTTP_TIMEOUT) as response:
            status, body = response.status, response.read(MAX_RESPONSE + 1)
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read(MAX_RESPONSE + 1)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise BundleError(f"cannot reach {where}: {shown(str(reason))}") from None
    if len(body) > MAX_RESPONSE:
        raise BundleError(f"{where} answered more than {MAX_RESPONSE} bytes")
    try:
        doc = json.loads(body)
    except ValueError:
        raise BundleError(f"{where} answered HTTP {status} without JSON") from None
    if not isinstance(doc, dict):
        raise BundleError(f"{where} answered HTTP {status} with JSON that is not an object")
    return status, doc


def _oauth_error(doc: dict) -> str:
    error = doc.get("error")
    text = shown(str(error), 64) if error else "no error code"
    if doc.get("error_description"):
        text += f": {shown(str(doc['error_description']))}"
    return text


# --------------------------------------------------------------------------- the issuer


@dataclass(frozen=True)
class Provider:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    revocation_endpoint: str = ""


def discover(issuer: str, context: ssl.SSLContext) -> Provider:
    url = _https(issuer, "the issuer").rstrip("/") + "/.well-known/openid-configuration"
    status, doc = request_json(url, context)
    if status != 200:
        raise BundleError(f"the issuer's discovery document answered HTTP {status}")
    if doc.get("issuer") != issuer:
        raise BundleError(f"the discovery document names issuer {shown(str(doc.get('issuer')))!r}, not {issuer!r}")
    methods = doc.get("code_challenge_methods_supported")
    if isinstance(methods, list) and "S256" not in methods:
        raise BundleError("the issuer does not support PKCE with S256")
    revocation = doc.get("revocation_endpoint")
    return Provider(issuer, _https(doc.get("authorization_endpoint"), "authorization_endpoint"),
                    _https(doc.get("token_endpoint"), "token_endpoint"), _https(doc.get("jwks_uri"), "jwks_uri"),
                    _https(revocation, "revocation_endpoint") if revocation else "")


def fetch_jwks(provider: Provider, context: ssl.SSLContext) -> dict:
    status, doc = request_json(provider.jwks_uri, context)
    if status != 200 or not isinstance(doc.get("keys"), list):
        raise BundleError(f"the issuer's JWKS answered HTTP {status} without keys")
    return doc


def verify_id_token(token: str, jwks: dict, *, issuer: str, client_id: str, nonce: str, subject: str = "") -> dict:
    """OpenID Connect Core 3.1.3.7: signature by a key of the issuer's JWKS, iss, aud holding our
    client id (azp ours when there are several), exp, and our nonce (when refreshed: the nonce of the
    first login, if the token carries one, and the same subject)."""
    if not isinstance(token, str) or not token:
        raise BundleError("the identity provider returned no ID token")
    try:
        claims = verify_token(token, jwks, audience=client_id, issuers=(issuer,), leeway=LEEWAY)
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise BundleError(f"the ID token does not verify: {shown(str(exc))}") from None
    audience = claims.get("aud")
    if isinstance(audience, list) and len(audience) > 1 and claims.get("azp") != client_id:
        raise BundleError("the ID token names several audiences but is not issued to this client (azp)")
    if subject:  # a refresh
        if claims.get("sub") != subject:
            raise BundleError("the refreshed ID token names another subject")
        if "nonce" in claims and claims["nonce"] != nonce:
            raise BundleError("the refreshed ID token carries another nonce")
    elif claims.get("nonce") != nonce:
        raise BundleError("the ID token's nonce does not match this login (a replayed or foreign token)")
    return claims


def _audiences(claims: dict) -> list:
    aud = claims.get("aud")
    return aud if isinstance(aud, list) else [aud]


def server_token(tokens: dict, id_claims: dict, jwks: dict, *, issuer: str, audience: str) -> tuple[str, int]:
    """The token Temporal's frontend will take (its one `audience`): the ID token if its aud holds
    it, else the access token if that is a JWT of this issuer for it."""
    if audience in _audiences(id_claims):
        return tokens["id_token"], int(id_claims["exp"])
    access = tokens.get("access_token")
    if isinstance(access, str) and access.count(".") == 2:
        try:
            claims = verify_token(access, jwks, audience=audience, issuers=(issuer,), leeway=LEEWAY)
            return access, int(claims["exp"])
        except (jwt.PyJWTError, ValueError, TypeError):
            pass
    raise BundleError(f"the identity provider's tokens are not for audience {audience!r}, the one the server checks "
                      "(Dex: the UI client must list this client in trustedPeers; an external IdP: issue the "
                      "CLI's tokens for that audience, or use --exchange-url)")


def exchange(url: str, subject_token: str, audience: str, context: ssl.SSLContext) -> tuple[str, int]:
    """A bundle token for the IdP's token, from the RFC 8693 token exchange (serve-exchange)."""
    status, doc = request_json(_https(url, "--exchange-url"), context, {
        "grant_type": GRANT_TYPE, "subject_token": subject_token, "subject_token_type": JWT_TOKEN_TYPE,
        "audience": audience})
    if status != 200:
        raise BundleError(f"the token exchange refused the IdP's token (HTTP {status}, {_oauth_error(doc)})")
    token = doc.get("access_token")
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except (jwt.PyJWTError, TypeError):
        raise BundleError("the token exchange answered without a JWT") from None
    if type(claims.get("exp")) is not int:  # noqa: E721
        raise BundleError("the exchanged token has no exp")
    return token, claims["exp"]


# --------------------------------------------------------------------------- the loopback listener


class _Callback(BaseHTTPRequestHandler):
    timeout = 10  # a connection that sends nothing does not hold the login
    server_version = "temporal-bundle-login"
    sys_version = ""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self.server.target = self.path
        try:
            self.server.code = parse_callback(self.path, self.server.state)
            status, text = 200, "Login received. You can close this tab and return to the terminal."
        except BundleError as exc:
            self.server.failure = exc
            status, text = 400, f"Login failed: {exc}"
        body = f"<!doctype html><title>temporal-bundle login</title><p>{html.escape(text)}</p>\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # noqa: A002 - the request line holds the code: never logged
        pass


class CallbackListener:
    """127.0.0.1 only; serves exactly one request, then closes."""

    def __init__(self, state: str, port: int = 0):
        try:
            self.server = HTTPServer((LOOPBACK_HOST, port), _Callback)
        except OSError as exc:
            raise BundleError(f"cannot listen on {LOOPBACK_HOST}:{port} for the login callback: "
                              f"{exc.strerror or exc}") from None
        self.server.state, self.server.code, self.server.failure, self.server.target = state, "", None, None

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def wait(self, timeout: float) -> str:
        self.server.timeout = timeout
        try:
            self.server.handle_request()
        finally:
            self.close()
        if self.server.failure is not None:
            raise self.server.failure
        if self.server.target is None:
            raise BundleError(f"no login callback reached {redirect_uri(self.port)} within {timeout:g} s")
        return self.server.code

    def close(self) -> None:
        self.server.server_close()


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
        raise BundleError(f"the identity provider refused the code (HTTP {status}, {_oauth_error(tokens)})")
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
        raise BundleError(f"the identity provider refused the refresh (HTTP {status}, {_oauth_error(tokens)}); "
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
    return "revoked at the issuer" if status == 200 else f"not revoked: HTTP {status} ({_oauth_error(doc)})"


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
