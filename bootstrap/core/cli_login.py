"""Terminal login's pure pieces: PKCE (RFC 7636, S256), state and nonce, the authorization URL,
the loopback callback's parser (RFC 8252), and the Temporal CLI profile it writes.

The profile is the temporal CLI's own config file (TOML, read by go.temporal.io/sdk/contrib/envconfig
v1.0.2, which CLI 1.9.1 uses): `[profile.<name>]` with address, namespace, api_key and a `tls` table
(client_cert_path, client_key_path, server_ca_cert_path, server_name). That file may hold the user's
own profiles, so ours sits between two marker comments and only that block is ever rewritten or
removed; a profile of the same name that we did not write is refused, never replaced.
Nothing here touches the disk or the network.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import urllib.parse
from dataclasses import dataclass
from datetime import timedelta

from ..errors import BundleError

try:  # Python 3.11+; on 3.10 the structural checks below fall back to reading table headers
    import tomllib
except ImportError:  # pragma: no cover - the image and CI run 3.11
    tomllib = None

LOOPBACK_HOST = "127.0.0.1"
CALLBACK_PATH = "/callback"
# Dex: ask for a token whose audience is another client (the server's audience), which that
# client must allow by naming ours in its trustedPeers (server/oauth2.go, v2.45.1).
CROSS_CLIENT_SCOPE = "audience:server:client_id:"
MAX_CODE = 2048
PROFILE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$")
JWT_CHARS = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")
CODE_CHARS = re.compile(r"^[\x21-\x7e]+$")  # RFC 6749 VSCHAR, without the space
NAMESPACE = re.compile(r"^[A-Za-z0-9._-]{0,255}$")


# --------------------------------------------------------------------------- PKCE, state, URL


@dataclass(frozen=True)
class Pkce:
    verifier: str
    challenge: str
    method: str = "S256"


def new_pkce() -> Pkce:
    verifier = secrets.token_urlsafe(48)  # 64 characters of [A-Za-z0-9_-]
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return Pkce(verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii"))


def new_secret() -> str:
    """A state or nonce: 256 random bits."""
    return secrets.token_urlsafe(32)


def redirect_uri(port: int) -> str:
    return f"http://{LOOPBACK_HOST}:{port}{CALLBACK_PATH}"


def authorization_url(endpoint: str, *, client_id: str, redirect: str, scopes: tuple[str, ...], state: str, nonce: str,
                      challenge: str, connector: str = "") -> str:
    """`connector`: Dex's connector_id (e.g. ldap), which skips its page of connectors."""
    parts = urllib.parse.urlsplit(endpoint)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    query += [("response_type", "code"), ("client_id", client_id), ("redirect_uri", redirect),
              ("scope", " ".join(scopes)), ("state", state), ("nonce", nonce), ("code_challenge", challenge),
              ("code_challenge_method", "S256"), *([("connector_id", connector)] if connector else [])]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query, quote_via=urllib.parse.quote)))


# --------------------------------------------------------------------------- the callback


def shown(value: str, limit: int = 160) -> str:
    """Text from the network, safe for one terminal line: no control characters, bounded."""
    text = "".join(c if c.isprintable() else (f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}")
                   for c in value[:limit])
    return text + ("..." if len(value) > limit else "")


def parse_callback(target: str, state: str) -> str:
    """The authorization code from the request target the browser brought to the loopback listener.
    Our state must come back exactly (else the redirect is not the answer to our request, and an
    error it carries is not believed either); then an IdP error is reported; then one code."""
    try:
        parts = urllib.parse.urlsplit(target)
        pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True, max_num_fields=32)
    except ValueError:
        raise BundleError("the login callback is not a URL with a query") from None
    if parts.path != CALLBACK_PATH:
        raise BundleError(f"the request to the loopback listener is not the login callback (path {shown(parts.path)!r})")
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise BundleError("the login callback repeats a parameter")
    query = dict(pairs)
    if not hmac.compare_digest(query.get("state", "").encode(), state.encode()):
        raise BundleError("the login callback's state does not match this login (a stale or forged redirect)")
    if "error" in query:
        detail = f": {shown(query['error_description'])}" if query.get("error_description") else ""
        raise BundleError(f"the identity provider refused the login: {shown(query['error'], 64)}{detail}")
    code = query.get("code", "")
    if not code:
        raise BundleError("the login callback has no code")
    if len(code) > MAX_CODE or not CODE_CHARS.match(code):
        raise BundleError("the login callback's code is not an authorization code")
    return code


def is_stale(*, expires_at: int, now: int, window: timedelta) -> bool:
    return expires_at - now <= window.total_seconds()


# --------------------------------------------------------------------------- the CLI profile


@dataclass(frozen=True)
class CliProfile:
    name: str
    address: str
    api_key: str
    ca_path: str
    cert_path: str
    key_path: str
    server_name: str
    namespace: str = ""


def _begin(name: str) -> str:
    return f"# temporal-bundle login: profile {name} (rewritten by `temporal-bundle login`, removed by logout)"


def _end(name: str) -> str:
    return f"# end of temporal-bundle login: profile {name}"


def toml_string(value: str, what: str) -> str:
    if any(not c.isprintable() for c in value):
        raise BundleError(f"{what} holds a control character")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_block(profile: CliProfile) -> str:
    if not PROFILE_NAME.match(profile.name):
        raise BundleError(f"profile name {shown(profile.name)!r}: letters, digits, '_' and '-' only")
    if not ADDRESS.match(profile.address):
        raise BundleError(f"address {shown(profile.address)!r} is not host:port")
    if not JWT_CHARS.match(profile.api_key):
        raise BundleError("the token to write is not a JWT")
    if not NAMESPACE.match(profile.namespace):
        raise BundleError(f"namespace {shown(profile.namespace)!r} is not a namespace name")
    main = [("address", profile.address), *([("namespace", profile.namespace)] if profile.namespace else []),
            ("api_key", profile.api_key)]
    tls = [("client_cert_path", profile.cert_path), ("client_key_path", profile.key_path),
           ("server_ca_cert_path", profile.ca_path), ("server_name", profile.server_name)]
    lines = [_begin(profile.name), f"[profile.{profile.name}]"]
    lines += [f"{key} = {toml_string(value, key)}" for key, value in main]
    lines += ["", f"[profile.{profile.name}.tls]"]
    lines += [f"{key} = {toml_string(value, key)}" for key, value in tls if value]
    lines.append(_end(profile.name))
    return "\n".join(lines) + "\n"


def _split(text: str, name: str) -> tuple[str, str, str] | None:
    """(before, our block, after) when the text holds our block for `name`."""
    begin, end = _begin(name), _end(name)
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.rstrip("\r\n") == begin]
    ends = [i for i, line in enumerate(lines) if line.rstrip("\r\n") == end]
    if not starts and not ends:
        return None
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        raise BundleError(f"the markers of profile {name} are damaged; remove its block by hand")
    s, e = starts[0], ends[0]
    return "".join(lines[:s]), "".join(lines[s:e + 1]), "".join(lines[e + 1:])


def _profiles(text: str) -> dict | None:
    """The profiles the CLI reads from text, or None where tomllib is missing (Python 3.10)."""
    if tomllib is None:
        return None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BundleError(f"the Temporal CLI config is not valid TOML ({shown(str(exc))}); fix it or choose another file") from None
    profiles = doc.get("profile", {})
    return profiles if isinstance(profiles, dict) else {}


def _refuse_foreign(rest: str, name: str) -> None:
    profiles = _profiles(rest)
    if profiles is None:  # no TOML reader: a header or dotted key naming the profile is enough to refuse
        pattern = rf'^\s*(\[\s*)?profile\s*\.\s*("?){re.escape(name)}\2\s*[.\]=]'
        foreign = re.search(pattern, rest, re.M) is not None
    else:
        foreign = name in profiles
    if foreign:
        raise BundleError(f"profile {name} in the Temporal CLI config was not written by temporal-bundle login; "
                          "choose another --profile")


def merge_profile(existing: str | None, profile: CliProfile) -> str:
    """The config text with our block for the profile put in (replaced where it was, else appended);
    every other byte of the file is kept."""
    block = render_block(profile)
    text = existing or ""
    split = _split(text, profile.name)
    if split is None:
        before, after = text + ("\n" if text and not text.endswith("\n") else ""), ""
    else:
        before, _, after = split
    _refuse_foreign(before + after, profile.name)
    merged = before + block + after
    profiles = _profiles(merged)
    if profiles is not None and profiles.get(profile.name) != _expected(profile):
        raise BundleError(f"profile {profile.name} would not read back as written; fix the Temporal CLI config by hand")
    return merged


def _expected(profile: CliProfile) -> dict:
    doc = {"address": profile.address, **({"namespace": profile.namespace} if profile.namespace else {}),
           "api_key": profile.api_key}
    tls = {"client_cert_path": profile.cert_path, "client_key_path": profile.key_path,
           "server_ca_cert_path": profile.ca_path, "server_name": profile.server_name}
    doc["tls"] = {k: v for k, v in tls.items() if v}
    return doc


def remove_profile(existing: str, name: str) -> str | None:
    """The config text without our block for `name` (unchanged if it has none); None when nothing
    but blank lines would remain, so the file itself can go."""
    split = _split(existing, name)
    if split is None:
        return existing
    before, _, after = split
    rest = before + after
    return rest if rest.strip() else None


def holds_profile(text: str, name: str) -> bool:
    return _split(text, name) is not None
