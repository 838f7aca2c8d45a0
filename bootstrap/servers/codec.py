"""The codec server: Temporal's remote codec protocol over HTTPS, decrypting only for callers
whose token grants the namespace.

    POST .../decode   {"payloads": [{"metadata": {"encoding": "<b64>", ...}, "data": "<b64>"}]}
    POST .../encode   the same shape both ways (proto3 JSON of temporal.api.common.v1.Payloads)
    GET  /healthz     200 while the data keys and the JWKS load
    OPTIONS ...       CORS preflight, answered only for the configured Web UI origins

Only the last path segment selects the endpoint, so `https://codec:8888/{namespace}/decode` (the
CLI's endpoint templating) works too. The namespace comes from the X-Namespace header, which the
Web UI and the `temporal` CLI both send, else from the path segment before the endpoint.

Every POST needs `Authorization: Bearer <jwt>`, verified like Temporal's default claim mapper does
(kid lookup in the JWKS, RS256/ES256 only, exp/nbf/iat, audience): missing or invalid -> 401.
Then Temporal's own role lattice decides, with the same bit flags (worker=1 < read=2 < write=4 <
admin=8, OR-ed over the token's "<ns>:<role>" permissions, `have >= required`, and
`temporal-system:<role>` counting for every namespace):
  - decode: a token holding `decrypt_role` (admin by default) gets plaintext; any other valid
    token gets its payloads back unchanged, still encrypted (200), as if no codec were set;
  - encode: needs at least write on the namespace, else 403.
The JWKS is the bundle's jwks.json (re-read on change) or one or more JWKS URLs (re-fetched every
minute, and at once for a kid not seen yet). The data keys are re-read when `rotate --kind codec-key`
replaces the file, and the TLS certificate when it is re-issued.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
from google.protobuf import json_format
from temporalio.api.common.v1 import Payloads

from ..codec import CodecError, KeyringFile, decrypt_all, encrypt_all
from ..errors import BundleError
from ..tokens import verify_token
from .auth import ROLE_BITS, CombinedJWKS, FileJWKS, URLJWKS, grants, role_for  # noqa: F401
from .jwks import ReloadingTLS

ENCODE_ROLE = "write"
MAX_BODY = 16 * 1024 * 1024  # a history page of payloads; Temporal's own blob limit is 2 MiB each
NAMESPACE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")
ALLOW_HEADERS = "Authorization, Content-Type, X-Namespace"
ALLOW_METHODS = "POST, OPTIONS"


# --------------------------------------------------------------------------- HTTP


@dataclass(frozen=True)
class Policy:
    audience: str
    decrypt_role: str = "admin"
    ui_origins: tuple[str, ...] = ()


class _Refusal(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class _Handler(BaseHTTPRequestHandler):
    server_version = "temporal-bundle-codec"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    # ---- CORS

    def _origin(self) -> str | None:
        return self.headers.get("Origin")

    def _origin_allowed(self) -> bool:
        return self._origin() in self.server.policy.ui_origins

    def _cors_headers(self) -> None:
        self.send_header("Vary", "Origin")
        if self._origin_allowed():
            self.send_header("Access-Control-Allow-Origin", self._origin())
            # The UI's "include cross-origin credentials" setting sends fetch(credentials: include),
            # which the browser only completes when this is true; the origin is never "*".
            self.send_header("Access-Control-Allow-Credentials", "true")

    def do_OPTIONS(self):  # noqa: N802
        if not self._origin_allowed():
            return self._send(403, {"error": "origin not allowed"})
        self.send_response(204)
        self._cors_headers()
        self.send_header("Access-Control-Allow-Methods", ALLOW_METHODS)
        self.send_header("Access-Control-Allow-Headers", ALLOW_HEADERS)
        self.send_header("Access-Control-Max-Age", "600")
        self.send_header("Content-Length", "0")
        self.end_headers()

    # ---- routes

    def do_GET(self):  # noqa: N802
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            return self._health()
        if _action(path):
            return self._send(405, {"error": "use POST"}, allow="POST, OPTIONS")
        return self._send(404, {"error": "not found"})

    def do_POST(self):  # noqa: N802
        self._body_read = False  # one handler serves every request of a keep-alive connection
        path = self.path.split("?", 1)[0]
        action = _action(path)
        if action is None:
            self._drain()
            return self._send(404, {"error": "not found"})
        namespace = subject = None
        try:
            if self._origin() is not None and not self._origin_allowed():
                raise _Refusal(403, "origin not allowed")
            claims = self._authenticate()
            subject = claims.get("sub")
            namespace = self._namespace(path)
            payloads = self._payloads()
            if action == "decode":
                if grants(claims, namespace, self.server.policy.decrypt_role):
                    result, outcome = decrypt_all(payloads, self.server.keys.current()), "decrypted"
                else:
                    result, outcome = payloads, "kept encrypted (role too low)"
            else:
                if not grants(claims, namespace, ENCODE_ROLE):
                    raise _Refusal(403, f"encode needs at least {ENCODE_ROLE} on namespace {namespace!r}")
                result, outcome = encrypt_all(payloads, self.server.keys.current()), "encrypted"
        except _Refusal as refusal:
            self._audit(action, namespace, subject, f"refused {refusal.status}: {refusal.message}")
            self._drain()
            return self._send(refusal.status, {"error": refusal.message}, bearer=refusal.status == 401)
        except CodecError as exc:
            self._audit(action, namespace, subject, f"failed: {exc}")
            return self._send(400, {"error": str(exc)})
        except BundleError as exc:  # the keyring file is missing or unreadable
            self._audit(action, namespace, subject, f"failed: {exc}")
            return self._send(503, {"error": f"data keys unavailable: {exc}"})
        self._audit(action, namespace, subject, f"{outcome} {len(result)} payload(s)")
        body = json_format.MessageToJson(Payloads(payloads=result), indent=None).encode()
        self._send_raw(200, body)

    # ---- request parts

    def _authenticate(self) -> dict:
        header = self.headers.get("Authorization") or ""
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _Refusal(401, "missing bearer token")
        token = token.strip()
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            jwks = self.server.jwks.document(kid if isinstance(kid, str) else None)
        except jwt.PyJWTError as exc:
            raise _Refusal(401, f"invalid token: {exc}") from None
        except (OSError, ValueError) as exc:
            raise _Refusal(503, f"JWKS unavailable: {exc}") from None
        try:
            return verify_token(token, jwks, audience=self.server.policy.audience)
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise _Refusal(401, f"invalid token: {exc}") from None

    def _namespace(self, path: str) -> str:
        namespace = self.headers.get("X-Namespace")
        if namespace is None:
            parts = [p for p in path.split("/") if p]
            namespace = parts[-2] if len(parts) >= 2 else ""
        if not NAMESPACE.match(namespace):
            raise _Refusal(400, "missing or invalid X-Namespace header")
        return namespace

    def _payloads(self) -> list:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise _Refusal(411, "Content-Length required")
        if int(length) > MAX_BODY:
            raise _Refusal(413, f"body larger than {MAX_BODY} bytes")
        body = self.rfile.read(int(length))
        self._body_read = True
        try:
            message = json_format.Parse(body, Payloads(), ignore_unknown_fields=True)
        except (json_format.ParseError, ValueError, UnicodeDecodeError) as exc:
            raise _Refusal(400, f"body is not proto3 JSON of Payloads: {exc}") from None
        return list(message.payloads)

    def _drain(self) -> None:
        """Read an unread body so the connection stays usable (or is closed if it cannot be)."""
        if self._body_read:
            return
        length = self.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) <= MAX_BODY:
            self.rfile.read(int(length))
        else:
            self.close_connection = True

    def _health(self) -> None:
        try:
            self.server.keys.current()
            problem = self.server.keys.error
            self.server.jwks.document()
        except (BundleError, OSError, ValueError) as exc:
            return self._send(503, {"status": "unavailable", "error": str(exc)})
        if problem:
            return self._send(503, {"status": "degraded", "error": problem})
        self._send(200, {"status": "ok"})

    # ---- responses

    def _send(self, status: int, doc: dict, bearer: bool = False, allow: str | None = None) -> None:
        extra = {}
        if bearer:
            extra["WWW-Authenticate"] = 'Bearer realm="temporal-codec"'
        if allow:
            extra["Allow"] = allow
        self._send_raw(status, (json.dumps(doc) + "\n").encode(), extra)

    def _send_raw(self, status: int, body: bytes, extra: dict | None = None) -> None:
        self.send_response(status)
        self._cors_headers()
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")  # decrypted data must never be cached
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _audit(self, action, namespace, subject, outcome) -> None:
        if self.server.audit:
            print(f"codec {action} namespace={namespace!r} sub={subject!r}: {outcome}", file=sys.stderr, flush=True)

    def log_message(self, fmt, *args):
        pass  # the audit line above says what matters; tokens and payloads are never logged


def _action(path: str) -> str | None:
    last = path.rstrip("/").rsplit("/", 1)[-1]
    return last if last in ("encode", "decode") else None


class CodecServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, keys: KeyringFile, jwks, tls: ReloadingTLS | None, policy: Policy, audit: bool = True):
        self.keys, self.jwks, self.tls, self.policy, self.audit = keys, jwks, tls, policy, audit
        super().__init__(address, _Handler)

    def get_request(self):
        sock, addr = super().get_request()
        sock.settimeout(30)
        if self.tls is not None:
            # Handshake lazily in the handler thread: a slow client cannot stall accept().
            sock = self.tls.context().wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def handle_error(self, request, client_address):
        pass  # failed handshakes and dropped connections are the client's problem


def make_server(
    host: str,
    port: int,
    *,
    keys_path: Path,
    policy: Policy,
    jwks_path: Path | None = None,
    jwks_urls: tuple[str, ...] = (),
    jwks_cafile: Path | None = None,
    cert: Path | None = None,
    key: Path | None = None,
    audit: bool = True,
) -> CodecServer:
    """Fails at start (BundleError, OSError, ssl.SSLError) if the keys or the cert are unusable."""
    keys = KeyringFile(keys_path)
    keys.current()
    if jwks_urls:
        jwks = CombinedJWKS([URLJWKS(url, jwks_cafile) for url in jwks_urls])
    elif jwks_path is not None:
        jwks = FileJWKS(jwks_path)
    else:
        raise BundleError("the codec server needs a JWKS file or URL")
    tls = ReloadingTLS(cert, key) if cert and key else None
    if tls is not None:
        tls.context()
    return CodecServer((host, port), keys, jwks, tls, policy, audit)
