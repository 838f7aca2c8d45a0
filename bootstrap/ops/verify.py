"""verify: try every listener of a RUNNING deployment with every credential, and the frontend with
forged and misused tokens, from the outside; report each pair that was wrongly admitted or refused.

The expectations are bootstrap.core.verify_plan's (from security_model.LISTENERS). Credentials:
every certificate the bundle issues (server certificates used as client certificates too), one from
a foreign CA with the names of the most powerful identities, an expired one from each trust
domain's own CA (so it needs the CA keys: verify runs where private/ is mounted; under
keys.backend pkcs11 they sign inside the token), and none. The forged certificates live in a
private temporary directory for the run only, never in the bundle. Tokens are minted with the
bundle's active signing key or forged, in memory; no token and no key is ever printed.

Without keys (the Kubernetes Job, `--without-keys`): no CA key and no signing key is there. The
certificates presented are those found under the bundle directory (a role's), the foreign CA is
made on the spot, the expired certificates are not tried; the role's own token (kept fresh by the
token refresher) is the valid one and the base of the forgeries; the attacks that need the signing
key (SIGNING_KEY_ATTACKS) are reported as not checked, and "wrong namespace" is the role's valid
token on a namespace it names no permission for.

Outcomes of one TLS probe (standard library only):
    unreachable: ...   no such name, connection refused, no route, connect timeout
    admitted           handshake done and the server answered what was sent after it (gRPC: its
                       HTTP/2 SETTINGS; HTTPS: an HTTP response; PostgreSQL: an authentication
                       request); membership (TChannel) says nothing first: silence without an alert
    refused: ...       a TLS alert, reset or EOF, during or after the handshake (TLS 1.3 sends the
                       verdict on the client certificate after it); PostgreSQL's error after TLS
    client-verify-error: ...  OUR check of the server certificate failed (wrong roots or a wrong
                       server certificate): never a valid answer
    plaintext-http     plain HTTP answered (plaintext listeners)
    silent / error: ...  anything else; never a valid answer either
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import functools
import json
import socket
import ssl
import struct
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import jwt

from ..core.config import BundleConfig
from ..core.pki import CA, utcnow
from ..core.security_model import LISTENERS
from ..core.tokens import SigningKey, mint_token
from ..core.verify_plan import (
    ACCEPTED, DENIED, SERVER_LEAF, SIGNING_KEY_ATTACKS, TOKEN_ATTACKS, UNREACHABLE, VANTAGES, Credential, Pair, Probe,
    Route, Skipped, deployed, plan, role_namespace, token_expectation, unprovable, verdict,
)
from ..errors import BundleError
from ..store import Layout
from .plan import DOMAINS, active_signing_key, leaf_specs, load_cas, load_published_keys

CONNECT_TIMEOUT = 4.0
HANDSHAKE_TIMEOUT = 8.0
READ_TIMEOUT = 6.0  # an admitted gRPC/HTTPS peer answers within milliseconds; an alert too
MEMBERSHIP_SILENCE = 3.0  # TChannel waits for our init request: silence this long = admitted
TOKEN_CALL_TIMEOUT = timedelta(seconds=15)
# Listeners are probed in parallel, each one's pairs in turn: never two connections at once to one
# listener, so a per-peer connection limit cannot turn an admitted pair into a refused one.
WORKERS = 6
SYSTEM_CN = "temporal-bundle:system"
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + empty SETTINGS
SSL_REQUEST = struct.pack("!ii", 8, 80877103)


@dataclass(frozen=True)
class Row:
    listener: str
    credential: str
    expected: str
    got: str

    @property
    def ok(self) -> bool:
        return verdict(self.got) == self.expected

    def as_dict(self) -> dict:
        return {"listener": self.listener, "credential": self.credential, "expected": self.expected, "got": self.got,
                "ok": self.ok}


@dataclass
class Report:
    vantage: str
    rows: list[Row] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    unprovable: list[str] = field(default_factory=list)  # listeners the credentials cannot judge
    seconds: float = 0.0

    @property
    def wrong(self) -> list[Row]:
        return [row for row in self.rows if not row.ok]

    @property
    def passed(self) -> bool:
        return bool(self.rows) and not self.wrong and not self.unprovable

    def as_dict(self) -> dict:
        return {"vantage": self.vantage, "pairs": len(self.rows), "wrong": len(self.wrong), "passed": self.passed,
                "seconds": round(self.seconds, 1), "rows": [r.as_dict() for r in self.rows],
                "skipped": [{"listener": s.listener, "reason": s.reason} for s in self.skipped],
                "unprovable": self.unprovable}


# --------------------------------------------------------------------------- credentials


def issued_credentials(config: BundleConfig, layout: Layout, without_keys: bool = False) -> list[Credential]:
    """Every issued pair; without keys, the pairs that are here (a Job mounts one role's)."""
    out = []
    for spec in leaf_specs(config):
        cert, key = layout.leaf(spec.directory, spec.name)
        if without_keys and not (cert.is_file() and key.is_file()):
            continue
        for path in (cert, key):
            if not path.is_file():
                raise BundleError(f"{path} is missing: verify needs every issued certificate (run init first)")
        out.append(Credential(f"{spec.directory}/{spec.name}", spec.domain, spec.usage, False, str(cert), str(key)))
    return out


def forged_credentials(config: BundleConfig, layout: Layout, workdir: Path, without_keys: bool = False) -> list[Credential]:
    """A foreign CA's certificate copying the system role's CN and the internode name, and (with
    the CA keys) an expired certificate from each domain's own CA; written to workdir (0600 keys)."""
    net = config.network
    foreign = CA.create("Temporal Bundle CA", organization="Temporal Bundle")
    forged = [write_leaf(workdir, "foreign-ca", foreign.issue_cert(net.internode_server_name, common_name=SYSTEM_CN,
                                                                  usage="both"), "foreign", "both")]
    if without_keys:
        return forged
    cas, _ = load_cas(config, layout)
    now = utcnow()
    for domain in DOMAINS:
        usage = "both" if domain == "internode" else "client"
        sans = (net.internode_server_name,) if domain == "internode" else ()
        common_name = {"internode": net.internode_server_name, "database": config.persistence.user}.get(domain, SYSTEM_CN)
        leaf = cas[domain].issue_cert(*sans, common_name=common_name, usage=usage, now=now - timedelta(days=3),
                                      lifetime=timedelta(days=1))
        forged.append(write_leaf(workdir, f"expired-{domain}", leaf, domain, usage, expired=True))
    return forged


def write_leaf(workdir: Path, name: str, leaf, domain: str, usage: str, expired: bool = False) -> Credential:
    cert, key = workdir / f"{name}.pem", workdir / f"{name}.key"
    cert.write_bytes(leaf.cert_pem())
    key.touch(mode=0o600)
    key.write_bytes(leaf.key_pem())
    return Credential(name, domain, usage, expired, str(cert), str(key))


def all_credentials(config: BundleConfig, layout: Layout, workdir: Path, without_keys: bool = False) -> list[Credential]:
    return [*issued_credentials(config, layout, without_keys), *forged_credentials(config, layout, workdir, without_keys),
            Credential("no certificate", "none", "")]


# --------------------------------------------------------------------------- TLS probes


@functools.lru_cache(maxsize=None)
def resolve(host: str) -> str:
    """The address of host, or an "unreachable: ..." string (asked once per host)."""
    try:
        return socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
    except socket.gaierror as exc:
        return f"unreachable: name does not resolve ({exc.strerror})"


def connect(host: str, port: int):
    address = resolve(host)
    if address.startswith("unreachable"):
        return address
    try:
        return socket.create_connection((address, port), timeout=CONNECT_TIMEOUT)
    except ConnectionRefusedError:
        return "unreachable: connection refused"
    except socket.timeout:
        return "unreachable: connect timed out"
    except OSError as exc:  # EHOSTUNREACH, ENETUNREACH
        return f"unreachable: {exc.strerror or exc}"


def client_context(probe: Probe, credential: Credential) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the server: chain and name
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cafile=probe.roots)
    if credential.cert:
        context.load_cert_chain(credential.cert, credential.key)
    if probe.mode == "grpc":
        context.set_alpn_protocols(["h2"])  # gRPC servers refuse a client that offers no h2
    elif probe.mode == "https":
        context.set_alpn_protocols(["http/1.1"])
    return context


def _refusal(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"refused: {exc.reason or exc}"
    return f"refused: {type(exc).__name__}"


def probe_pair(pair: Pair) -> str:
    probe = pair.probe
    if probe.mode == "plaintext":
        return probe_plaintext(probe)
    try:
        context = client_context(probe, pair.credential)
    except (OSError, ssl.SSLError) as exc:
        return f"error: loading the credential: {type(exc).__name__}"
    raw = connect(probe.host, probe.port)
    if isinstance(raw, str):
        return raw
    with raw:
        tls = _handshake(raw, context, probe)
        if isinstance(tls, str):
            return tls
        with tls:
            return _after_handshake(tls, probe)


def _handshake(raw: socket.socket, context: ssl.SSLContext, probe: Probe):
    try:
        if probe.mode == "postgres":
            raw.settimeout(READ_TIMEOUT)
            raw.sendall(SSL_REQUEST)
            if raw.recv(1) != b"S":
                return "error: PostgreSQL refused to start TLS"
        raw.settimeout(HANDSHAKE_TIMEOUT)
        return context.wrap_socket(raw, server_hostname=probe.server_name)
    except ssl.SSLCertVerificationError as exc:
        return f"client-verify-error: {exc.verify_message}"
    except socket.timeout:
        return "silent: handshake timed out"
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError, ConnectionAbortedError) as exc:
        return _refusal(exc)
    except OSError as exc:
        return f"error: handshake: {exc.strerror or type(exc).__name__}"


def _first_request(probe: Probe) -> bytes:
    if probe.mode == "grpc":
        return H2_PREFACE
    if probe.mode == "https":
        return f"GET / HTTP/1.1\r\nHost: {probe.server_name}\r\nConnection: close\r\n\r\n".encode()
    if probe.mode == "postgres":
        params = b"user\x00" + probe.db_user.encode() + b"\x00database\x00postgres\x00\x00"
        return struct.pack("!ii", 8 + len(params), 196608) + params
    return b""  # membership: TChannel waits for us


def _after_handshake(tls: ssl.SSLSocket, probe: Probe) -> str:
    membership = probe.mode == "membership"
    try:
        tls.sendall(_first_request(probe))
        tls.settimeout(MEMBERSHIP_SILENCE if membership else READ_TIMEOUT)
        data = tls.recv(64)
    except socket.timeout:
        return "admitted" if membership else "silent: no answer after the handshake"
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError, ConnectionAbortedError) as exc:
        return _refusal(exc)
    except OSError as exc:
        return f"error: after the handshake: {exc.strerror or type(exc).__name__}"
    if not data:
        return "refused: EOF"
    if probe.mode == "grpc":  # an HTTP/2 frame header: 3 bytes length, type 4 = SETTINGS
        return "admitted" if len(data) >= 4 and data[3] == 4 else f"error: not HTTP/2: {data[:16]!r}"
    if probe.mode == "https":
        return "admitted" if data.startswith(b"HTTP/") else f"error: not HTTP: {data[:16]!r}"
    if probe.mode == "postgres":  # R: an authentication request or ok; E: refused after TLS
        return "admitted" if data[:1] == b"R" else f"refused: PostgreSQL said {data[:1]!r}"
    return f"error: membership spoke first: {data[:16]!r}"


def probe_plaintext(probe: Probe) -> str:
    raw = connect(probe.host, probe.port)
    if isinstance(raw, str):
        return raw
    with raw:
        try:
            raw.settimeout(READ_TIMEOUT)
            raw.sendall(f"GET / HTTP/1.1\r\nHost: {probe.host}\r\nConnection: close\r\n\r\n".encode())
            data = raw.recv(64)
        except socket.timeout:
            return "silent: no answer to plain HTTP"
        except OSError as exc:
            return f"refused: {type(exc).__name__}"
    return "plaintext-http" if data.startswith(b"HTTP/") else f"error: not HTTP: {data[:16]!r}"


def run_pairs(pairs: list[Pair], deadline_s: float) -> list[str]:
    """Each pair's outcome, in order; pairs not reached before the deadline: "not tried: deadline"."""
    deadline = time.monotonic() + deadline_s
    results = ["not tried: no result"] * len(pairs)
    by_listener: dict[str, list[int]] = {}
    for index, pair in enumerate(pairs):
        by_listener.setdefault(pair.listener, []).append(index)

    def run_listener(indices: list[int]) -> None:
        for index in indices:
            results[index] = "not tried: deadline" if time.monotonic() > deadline else probe_pair(pairs[index])

    with concurrent.futures.ThreadPoolExecutor(max_workers=WORKERS) as pool:
        for future in [pool.submit(run_listener, indices) for indices in by_listener.values()]:
            future.result()
    return results


# --------------------------------------------------------------------------- token attacks


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


def token_rows(frontend: Frontend, tokens: dict[str, str | None], namespace: str, elsewhere: str | None = None) -> list[Row]:
    """Each attack's call on `namespace`; "wrong namespace" on `elsewhere` when given (the role's
    valid token, on a namespace it names no permission for)."""
    attacks = [name for name in TOKEN_ATTACKS if name in tokens]
    where = {name: elsewhere if name == "wrong namespace" and elsewhere else namespace for name in attacks}

    async def all_attacks() -> list[str]:
        return [await token_outcome(frontend, tokens[name], where[name]) for name in attacks]

    outcomes = asyncio.run(all_attacks())
    listener = f"frontend gRPC, namespace {namespace}"
    return [Row(listener, f"token: {name}", token_expectation(name), got) for name, got in zip(attacks, outcomes)]


def frontend_of(pairs: list[Pair], layout: Layout, server_names: dict[str, str], role: str) -> Frontend | None:
    """The frontend gRPC listener where this run probed it, if it must be reachable from here."""
    probe = next((p.probe for p in pairs if p.listener == "frontend gRPC" and p.expected != UNREACHABLE), None)
    if probe is None:
        return None
    cert, key = layout.leaf("clients", role)
    return Frontend(f"{probe.host}:{probe.port}", server_names["temporal"], Path(probe.roots).read_bytes(),
                    cert.read_bytes(), key.read_bytes())


def token_attack_rows(config: BundleConfig, layout: Layout, pairs: list[Pair], server_names: dict[str, str],
                      without_keys: bool) -> tuple[list[Row], list[Skipped]]:
    listener = "frontend gRPC token attacks"
    if not without_keys:
        frontend = frontend_of(pairs, layout, server_names, config.roles[0].name)
        namespace = config.namespaces[0].name if config.namespaces else "default"
        if frontend is None:
            return [], []
        return token_rows(frontend, attack_tokens(config, layout, namespace), namespace), []
    role = next((c.name.removeprefix("clients/") for c in issued_credentials(config, layout, True)
                 if c.name.startswith("clients/") and layout.token(c.name.removeprefix("clients/")).is_file()), None)
    if role is None:
        return [], [Skipped(listener, "no role's certificate and token here")]
    namespace, frontend = role_namespace(config, role), frontend_of(pairs, layout, server_names, role)
    if namespace is None or frontend is None:
        return [], [Skipped(listener, f"role {role} reads no registered namespace, or the frontend is not reachable")]
    tokens = role_attack_tokens(config, layout.token(role).read_text().strip())
    return token_rows(frontend, tokens, namespace, f"verify-not-{namespace}"), [
        Skipped(f"{listener}: {name}", "needs the signing key, which the Job never gets") for name in SIGNING_KEY_ATTACKS]


# --------------------------------------------------------------------------- the whole run


def verify(config: BundleConfig, layout: Layout, vantage_name: str, *, host: str | None = None,
           services: set[str] | None = None, tokens: bool = True, deadline_s: float = 600,
           routes: dict[str, Route] | None = None, without_keys: bool = False) -> Report:
    started = time.monotonic()
    vantage = VANTAGES[vantage_name]
    specs = leaf_specs(config)
    issued = {(spec.directory, spec.name) for spec in specs}
    server_names = {service: spec.common_name for spec in specs for service, leaf in SERVER_LEAF.items()
                    if leaf == (spec.directory, spec.name)}
    roots = {"server": str(layout.trust_files("server")[0]), "internode": str(layout.trust_files("internode")[0])}
    if vantage.routed and services is None:  # every service may run there: its routes decide (plan)
        services = {l.service for l in LISTENERS}
    listeners, skipped = deployed(config, issued, services)
    report = Report(vantage.name, skipped=skipped)
    with tempfile.TemporaryDirectory(prefix="temporal-bundle-verify-") as workdir:
        credentials = all_credentials(config, layout, Path(workdir), without_keys)
        pairs, not_here = plan(config, listeners, credentials, vantage, server_names, roots, host, routes)
        report.skipped += not_here
        outcomes = run_pairs(pairs, deadline_s)
    report.rows = [Row(p.listener, p.credential.name, p.expected, got) for p, got in zip(pairs, outcomes)]
    report.unprovable = unprovable(pairs)
    if without_keys:
        report.skipped.append(Skipped("every TLS listener: expired certificates", "needs the CA keys, which the Job never gets"))
    if tokens:
        rows, not_tried = token_attack_rows(config, layout, pairs, server_names, without_keys)
        report.rows += rows
        report.skipped += not_tried
    report.seconds = time.monotonic() - started
    return report
