"""Terminal login, the issuer side: HTTPS to the issuer (a *.localhost name reached on loopback,
TLS still checked for the name), discovery, the JWKS, the ID token's checks, the token the server
takes, and the RFC 8693 exchange."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import jwt

from ..core.cli_login import shown
from ..core.tokens import verify_token
from ..core.workload_identity import GRANT_TYPE, JWT_TOKEN_TYPE
from ..errors import BundleError

MAX_RESPONSE = 1024 * 1024
HTTP_TIMEOUT = 15.0
LEEWAY = 30  # seconds of clock skew between this machine and the issuer


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


def oauth_error(doc: dict) -> str:
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
        raise BundleError(f"the token exchange refused the IdP's token (HTTP {status}, {oauth_error(doc)})")
    token = doc.get("access_token")
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except (jwt.PyJWTError, TypeError):
        raise BundleError("the token exchange answered without a JWT") from None
    if type(claims.get("exp")) is not int:  # noqa: E721
        raise BundleError("the exchanged token has no exp")
    return token, claims["exp"]
