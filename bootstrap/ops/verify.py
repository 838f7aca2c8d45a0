"""verify: try every listener of a RUNNING deployment with every credential, and the frontend with
forged and misused tokens, from the outside; report each pair that was wrongly admitted or refused.

The expectations are bootstrap.core.verify_plan's (from security_model.LISTENERS). Credentials:
every certificate the bundle issues (server certificates used as client certificates too), one from
a foreign CA with the names of the most powerful identities, an expired one from each trust
domain's own CA (so it needs the CA keys: verify runs where private/ is mounted; under
keys.backend pkcs11 they sign inside the token), and none. The forged certificates live in a
private temporary directory for the run only, never in the bundle. Tokens are minted with the
bundle's active signing key or forged, in memory; no token and no key is ever printed.

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
    ACCEPTED, DENIED, SERVER_LEAF, TOKEN_ATTACKS, VANTAGES, Credential, Pair, Probe, Skipped, deployed, host_of,
    plan, port_of, token_expectation, unprovable, verdict,
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


def issued_credentials(config: BundleConfig, layout: Layout) -> list[Credential]:
    out = []
    for spec in leaf_specs(config):
        cert, key = layout.leaf(spec.directory, spec.name)
        for path in (cert, key):
            if not path.is_file():
                raise BundleError(f"{path} is missing: verify needs every issued certificate (run init first)")
        out.append(Credential(f"{spec.directory}/{spec.name}", spec.domain, spec.usage, False, str(cert), str(key)))
    return out


def forged_credentials(config: BundleConfig, layout: Layout, workdir: Path) -> list[Credential]:
    """A foreign CA's certificate copying the system role's CN and the internode name, and an
    expired certificate from each domain's own CA; written to workdir (0600 keys)."""
    net = config.network
    foreign = CA.create("Temporal Bundle CA", organization="Temporal Bundle")
    forged = [write_leaf(workdir, "foreign-ca", foreign.issue_cert(net.internode_server_name, common_name=SYSTEM_CN,
                                                                  usage="both"), "foreign", "both")]
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


def all_credentials(config: BundleConfig, layout: Layout, workdir: Path) -> list[Credential]:
    return [*issued_credentials(config, layout), *forged_credentials(config, layout, workdir),
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


def attack_tokens(config: BundleConfig, layout: Layout, namespace: str) -> dict[str, str | None]:
    """TOKEN_ATTACKS' tokens: minted with the active signing key or forged; in memory only."""
    active = active_signing_key(layout, load_published_keys(layout))
    read, admin = [f"{namespace}:read"], ["temporal-system:admin"]

    def signed(permissions, key=active, audience=config.jwt.audience, now=None) -> str:
        return mint_token(key, role="verify", permissions=permissions, issuer=config.jwt.issuer, audience=audience,
                          lifetime=timedelta(minutes=10), now=now, claim=config.oidc.permissions_claim).encoded

    valid = signed(read)
    header, payload, signature = valid.split(".")
    claims = json.loads(_unb64(payload))
    escalated = {name: (admin if value == read else value) for name, value in claims.items()}
    stranger = SigningKey.generate(active.algorithm)
    tokens = {
        "valid": valid,
        "no token": None,
        "expired": signed(read, now=utcnow() - timedelta(hours=1)),
        "unknown kid": signed(read, key=stranger),
        "forged signature": jwt.encode(escalated, stranger.private_key, algorithm=stranger.algorithm,
                                       headers={"kid": active.kid, "typ": "JWT"}),
        "no kid": jwt.encode(claims, active.private_key, algorithm=active.algorithm),
        "alg none": f"{_b64_json({'alg': 'none', 'typ': 'JWT', 'kid': active.kid})}.{_b64_json(escalated)}.",
        "tampered": f"{header}.{_b64_json(escalated)}.{signature}",
        "wrong audience": signed(read, audience=f"not-{config.jwt.audience}"),
        "wrong namespace": signed([f"verify-not-{namespace}:admin"]),
    }
    assert set(tokens) == set(TOKEN_ATTACKS)
    return tokens


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


def token_rows(config: BundleConfig, layout: Layout, frontend: Frontend, namespace: str) -> list[Row]:
    tokens = attack_tokens(config, layout, namespace)

    async def all_attacks() -> list[str]:
        return [await token_outcome(frontend, tokens[name], namespace) for name in TOKEN_ATTACKS]

    outcomes = asyncio.run(all_attacks())
    listener = f"frontend gRPC, namespace {namespace}"
    return [Row(listener, f"token: {name}", token_expectation(name), got) for name, got in zip(TOKEN_ATTACKS, outcomes)]


def frontend_of(config: BundleConfig, layout: Layout, server_names: dict[str, str], host: str | None, vantage) -> Frontend:
    listener = next(l for l in LISTENERS if l.name == "frontend gRPC")
    role = config.roles[0].name
    cert, key = layout.leaf("clients", role)
    return Frontend(f"{host_of(listener, config, vantage, host)}:{port_of(listener, config)}", server_names["temporal"],
                    layout.trust_files("server")[0].read_bytes(), cert.read_bytes(), key.read_bytes())


# --------------------------------------------------------------------------- the whole run


def verify(config: BundleConfig, layout: Layout, vantage_name: str, *, host: str | None = None,
           services: set[str] | None = None, tokens: bool = True, deadline_s: float = 600) -> Report:
    started = time.monotonic()
    vantage = VANTAGES[vantage_name]
    specs = leaf_specs(config)
    issued = {(spec.directory, spec.name) for spec in specs}
    server_names = {service: spec.common_name for spec in specs for service, leaf in SERVER_LEAF.items()
                    if leaf == (spec.directory, spec.name)}
    roots = {"server": str(layout.trust_files("server")[0]), "internode": str(layout.trust_files("internode")[0])}
    listeners, skipped = deployed(config, issued, services)
    report = Report(vantage.name, skipped=skipped)
    with tempfile.TemporaryDirectory(prefix="temporal-bundle-verify-") as workdir:
        credentials = all_credentials(config, layout, Path(workdir))
        pairs, not_here = plan(config, listeners, credentials, vantage, server_names, roots, host)
        report.skipped += not_here
        outcomes = run_pairs(pairs, deadline_s)
    report.rows = [Row(p.listener, p.credential.name, p.expected, got) for p, got in zip(pairs, outcomes)]
    report.unprovable = unprovable(pairs)
    frontend_reached = any(l.name == "frontend gRPC" for l in listeners) and "published" in vantage.reachable
    if tokens and frontend_reached:
        namespace = config.namespaces[0].name if config.namespaces else "default"
        report.rows += token_rows(config, layout, frontend_of(config, layout, server_names, host, vantage), namespace)
    report.seconds = time.monotonic() - started
    return report
