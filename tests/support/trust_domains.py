"""Every credential the bundle issues, and probes of a listener with one of them from the client's
side (TLS, the PostgreSQL STARTTLS login): the trust-domain matrix of the server tier."""

from __future__ import annotations

import socket
import ssl
import struct
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from bootstrap.core.config import load_config
from bootstrap.core.pki import CA, utcnow
from bootstrap.core.security_model import LISTENERS, Listener
from bootstrap.ops.plan import leaf_specs
from bootstrap.store import Layout


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + empty SETTINGS


@dataclass(frozen=True)
class Credential:
    name: str
    cert: Path | None
    key: Path | None
    domain: str | None  # the CA that signed it; None for foreign or none
    usage: str = "client"
    expired: bool = False

    def admitted_by(self, domain: str) -> bool:
        return self.domain == domain and self.usage in ("client", "both") and not self.expired


def credentials(cluster, tmp: Path) -> list[Credential]:
    config, layout = load_config(cluster.config_path), Layout(cluster.bundle)
    creds = [
        Credential(f"{spec.directory}/{spec.name}", *layout.leaf(spec.directory, spec.name), spec.domain, spec.usage)
        for spec in leaf_specs(config)
    ]
    foreign = CA.create("Attacker CA").issue_cert(common_name="temporal-bundle:system", usage="both")
    creds.append(_written(tmp, "foreign-ca", foreign, None))
    for domain in ("client", "internode", "database"):
        ca = CA.from_pem(*(p.read_bytes() for p in layout.domain_ca(domain)))
        expired = ca.issue_cert(common_name=f"expired-{domain}", usage="both",
                                now=utcnow() - timedelta(days=10), lifetime=timedelta(days=1))
        creds.append(_written(tmp, f"expired-{domain}", expired, domain, expired=True))
    creds.append(Credential("no certificate", None, None, None))
    return creds


def _written(tmp: Path, name: str, leaf, domain, expired=False) -> Credential:
    cert, key = tmp / f"{name}.pem", tmp / f"{name}.key"
    cert.write_bytes(leaf.cert_pem())
    key.write_bytes(leaf.key_pem())
    return Credential(name, cert, key, domain, "both", expired)


def client_context(cafile: Path, cred: Credential) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cafile))
    context.set_alpn_protocols(["h2", "http/1.1"])  # grpc-go refuses a handshake without h2
    if cred.cert:
        context.load_cert_chain(str(cred.cert), str(cred.key))
    return context


def probe_tls(port: int, server_name: str, context: ssl.SSLContext, starttls: bytes = b"") -> str:
    """closed | refused | admitted. A client-side verification failure raises: that is a test bug."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=3)
    except ConnectionRefusedError:
        return "closed"
    with sock:
        if starttls:
            sock.sendall(starttls)
            if sock.recv(1) != b"S":
                return "refused"
        try:
            tls = context.wrap_socket(sock, server_hostname=server_name)
        except ssl.SSLCertVerificationError:
            raise
        except (ssl.SSLError, ConnectionError):
            return "refused"
        with tls:
            return "admitted" if _server_talks(tls) else "refused"


def _server_talks(tls: ssl.SSLSocket) -> bool:
    """After the handshake: TLS 1.3 servers reject a client cert only now, with an alert."""
    try:
        tls.sendall(H2_PREFACE if tls.selected_alpn_protocol() == "h2" else b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        tls.settimeout(1.5)
        return bool(tls.recv(64))
    except TimeoutError:
        return True  # membership (TChannel) waits for us silently: admitted, no alert
    except (ssl.SSLError, ConnectionError, OSError):
        return False


def postgres_login(port: int, cafile: Path, cred: Credential, user: str) -> str:
    """TLS + certificate auth as the database user: admitted only with AuthenticationOk."""
    context = client_context(cafile, cred)
    context.set_alpn_protocols(["postgresql"])
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=3)
    except ConnectionRefusedError:
        return "closed"
    with sock:
        sock.sendall(struct.pack("!ii", 8, 80877103))  # SSLRequest
        if sock.recv(1) != b"S":
            return "refused"
        try:
            tls = context.wrap_socket(sock, server_hostname="localhost")
            body = struct.pack("!i", 196608) + f"user\0{user}\0database\0postgres\0\0".encode()
            tls.sendall(struct.pack("!i", len(body) + 4) + body)
            reply = tls.recv(9)
        except ssl.SSLCertVerificationError:
            raise
        except (ssl.SSLError, ConnectionError, OSError):
            return "refused"
        return "admitted" if reply[:1] == b"R" and reply[5:9] == b"\0\0\0\0" else "refused"


def expected(listener: Listener, cred: Credential) -> str:
    if listener.admits == "any":
        return "admitted"
    return "admitted" if cred.admitted_by(listener.admits) else "refused"


def server_side(listener: Listener, layout: Layout, net) -> tuple[Path, str]:
    """The roots this listener's certificate chains to, and the name it answers to."""
    if listener.admits == "internode":
        return layout.trust_files("internode")[0], net.internode_server_name
    return layout.trust_files("server")[0], "localhost"


def run_matrix(cluster, tmp_path) -> tuple[int, list[str]]:
    config, layout = load_config(cluster.config_path), Layout(cluster.bundle)
    net = config.network
    creds = credentials(cluster, tmp_path)
    tried, wrong = 0, []
    for listener in LISTENERS:
        if listener.admits == "plaintext" or listener.service not in ("temporal", "jwks", "postgresql"):
            continue
        if listener.service == "postgresql" and cluster.postgres is None:
            continue
        cafile, name = server_side(listener, layout, net)
        for cred in creds:
            if listener.service == "postgresql":
                got = postgres_login(cluster.postgres.port, cafile, cred, config.persistence.user)
            else:
                got = probe_tls(listener.port_number(net), name, client_context(cafile, cred))
            tried += 1
            if got != expected(listener, cred):
                wrong.append(f"{listener.name} x {cred.name}: {got}, expected {expected(listener, cred)}")
    return tried, wrong
