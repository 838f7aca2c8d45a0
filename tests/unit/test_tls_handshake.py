"""Real TLS handshakes with the bundle's certificates: a server on 127.0.0.1 in a thread that
requires a client certificate (like Temporal's requireClientAuth: true), a client that verifies
the server's hostname. Each failure is asserted on the side that must detect it."""

from __future__ import annotations

import socket
import ssl
import threading
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from bootstrap.core.pki import CA, LeafCert, utcnow

# OpenSSL X509_V_ERR_* codes, as ssl.SSLCertVerificationError.verify_code reports them.
UNABLE_TO_GET_ISSUER_CERT_LOCALLY = 20
SELF_SIGNED_CERT_IN_CHAIN = 19  # the peer sent its CA along (OpenSSL auto-chains from its store)
UNTRUSTED = (UNABLE_TO_GET_ISSUER_CERT_LOCALLY, SELF_SIGNED_CERT_IN_CHAIN)
CERT_HAS_EXPIRED = 10
INVALID_PURPOSE = 26
HOSTNAME_MISMATCH = 62

TLS_VERSIONS = [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]


@dataclass
class Outcome:
    server_error: BaseException | None
    client_error: BaseException | None
    peer_subject: dict | None = None
    client_received: bytes = b""

    @property
    def ok(self) -> bool:
        return self.server_error is None and self.client_error is None and self.client_received == b"ok"


def _strict(context: ssl.SSLContext, version: ssl.TLSVersion | None) -> ssl.SSLContext:
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    if version is not None:
        context.minimum_version = context.maximum_version = version
    return context


def server_context(cert: Path, key: Path, ca: Path, version=None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.verify_mode = ssl.CERT_REQUIRED  # requireClientAuth: true
    context.load_verify_locations(cafile=str(ca))
    context.load_cert_chain(str(cert), str(key))
    return _strict(context, version)


def client_context(ca: Path, cert: Path | None, key: Path | None, version=None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    return _strict(context, version)


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server_hostname: str) -> Outcome:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    port = listener.getsockname()[1]
    server: dict = {"error": None, "peer": None}

    def serve():
        try:
            conn, _ = listener.accept()
        except OSError as exc:
            server["error"] = exc
            return
        conn.settimeout(10)
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                server["peer"] = tls.getpeercert()
                tls.sendall(b"ok")
                tls.recv(1)  # wait for the client to close
        except (OSError, ssl.SSLError) as exc:
            server["error"] = exc
        finally:
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client_error, received = None, b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
                # With TLS 1.3 the client finishes its handshake before the server has judged the
                # client certificate: a rejection arrives as an alert on the first read.
                received = tls.recv(2)
                if received != b"ok":
                    raise ConnectionError(f"server closed the connection (got {received!r})")
    except (OSError, ssl.SSLError) as exc:
        client_error = exc
    thread.join(15)
    listener.close()
    assert not thread.is_alive()
    return Outcome(server["error"], client_error, server["peer"], received)


def write_leaf(directory: Path, name: str, leaf: LeafCert) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    cert.write_bytes(leaf.cert_pem())
    key.write_bytes(leaf.key_pem())
    return cert, key


def subject_cn(peer: dict) -> str:
    return dict(item[0] for item in peer["subject"])["commonName"]


def assert_verify_error(error: BaseException | None, code: int | tuple[int, ...]) -> None:
    assert isinstance(error, ssl.SSLCertVerificationError), repr(error)
    codes = code if isinstance(code, tuple) else (code,)
    assert error.verify_code in codes, (error.verify_code, error.verify_message)


def assert_alerted(error: BaseException | None) -> None:
    """The peer that did not detect the problem sees a TLS alert or the connection dropped."""
    assert error is not None
    assert isinstance(error, (ssl.SSLError, ConnectionError, OSError)), repr(error)
    assert not isinstance(error, ssl.SSLCertVerificationError), "the wrong side verified"


@pytest.fixture(scope="module")
def files(ec_bundle):
    layout = ec_bundle.layout
    return {
        "ca": layout.trust_bundle,  # the server domain: what clients verify servers with
        "client_ca": layout.trust_files("client")[0],  # what the frontend accepts client certs from
        "internode_ca": layout.trust_files("internode")[0],
        "frontend": layout.leaf("server", "frontend"),
        "internode": layout.leaf("server", "internode"),
        "client": layout.leaf("clients", "client"),
        "system": layout.leaf("clients", "system"),
    }


# --------------------------------------------------------------------------- success


@pytest.mark.parametrize("version", TLS_VERSIONS, ids=["tls1.2", "tls1.3"])
@pytest.mark.parametrize("hostname", ["temporal", "localhost", "127.0.0.1"])
def test_right_ca_and_client_cert_succeeds(files, version, hostname):
    outcome = handshake(
        server_context(*files["frontend"], files["client_ca"], version),
        client_context(files["ca"], *files["client"], version=version),
        hostname,
    )
    assert outcome.ok, outcome
    assert subject_cn(outcome.peer_subject) == "temporal-bundle:client"


def test_internode_cert_is_both_server_and_client(files):
    outcome = handshake(
        server_context(*files["internode"], files["internode_ca"]),
        client_context(files["internode_ca"], *files["internode"]),
        "internode.temporal.internal",
    )
    assert outcome.ok, outcome
    assert subject_cn(outcome.peer_subject) == "internode.temporal.internal"


def test_trust_current_pem_works_like_the_bundle(ec_bundle, files):
    current = ec_bundle.layout.trust_current
    client_current = ec_bundle.layout.trust_files("client")[1]
    outcome = handshake(
        server_context(*files["frontend"], client_current), client_context(current, *files["system"]), "temporal"
    )
    assert outcome.ok, outcome


# --------------------------------------------------------------------------- failures


def test_client_trusting_a_foreign_ca_rejects_the_server(files, foreign_ca, tmp_path):
    foreign = tmp_path / "foreign-ca.pem"
    foreign.write_bytes(foreign_ca.cert_pem())
    outcome = handshake(
        server_context(*files["frontend"], files["client_ca"]), client_context(foreign, *files["client"]), "temporal"
    )
    assert_verify_error(outcome.client_error, UNTRUSTED)
    assert_alerted(outcome.server_error)


@pytest.mark.parametrize("version", TLS_VERSIONS, ids=["tls1.2", "tls1.3"])
def test_server_rejects_a_client_cert_from_a_foreign_ca(files, foreign_ca, tmp_path, version):
    cert, key = write_leaf(tmp_path, "intruder", foreign_ca.issue_cert(common_name="temporal-bundle:system", usage="client"))
    outcome = handshake(
        server_context(*files["frontend"], files["client_ca"], version),
        client_context(files["ca"], cert, key, version),
        "temporal",
    )
    assert_verify_error(outcome.server_error, UNTRUSTED)
    assert_alerted(outcome.client_error)


@pytest.mark.parametrize("version", TLS_VERSIONS, ids=["tls1.2", "tls1.3"])
def test_server_rejects_a_missing_client_cert(files, version):
    outcome = handshake(
        server_context(*files["frontend"], files["client_ca"], version), client_context(files["ca"], None, None, version), "temporal"
    )
    assert isinstance(outcome.server_error, ssl.SSLError), repr(outcome.server_error)
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in str(outcome.server_error).upper()
    assert_alerted(outcome.client_error)


def test_wrong_hostname_is_rejected_by_the_client(files):
    outcome = handshake(
        server_context(*files["frontend"], files["client_ca"]),
        client_context(files["ca"], *files["client"]),
        "internode.temporal.internal",  # a name only the internode cert carries
    )
    assert_verify_error(outcome.client_error, HOSTNAME_MISMATCH)
    assert_alerted(outcome.server_error)


def test_expired_server_cert_is_rejected_by_the_client(ec_bundle, files, tmp_path):
    expired = ec_bundle.ca.issue_cert(
        "temporal", "localhost", usage="server", now=utcnow() - timedelta(days=10), lifetime=timedelta(days=1)
    )
    cert, key = write_leaf(tmp_path, "expired-server", expired)
    outcome = handshake(server_context(cert, key, files["client_ca"]), client_context(files["ca"], *files["client"]), "temporal")
    assert_verify_error(outcome.client_error, CERT_HAS_EXPIRED)
    assert_alerted(outcome.server_error)


@pytest.mark.parametrize("version", TLS_VERSIONS, ids=["tls1.2", "tls1.3"])
def test_expired_client_cert_is_rejected_by_the_server(ec_bundle, files, tmp_path, version):
    expired = ec_bundle.ca_of("client").issue_cert(
        common_name="temporal-bundle:client", usage="client", now=utcnow() - timedelta(days=10), lifetime=timedelta(days=1)
    )
    cert, key = write_leaf(tmp_path, "expired-client", expired)
    outcome = handshake(
        server_context(*files["frontend"], files["client_ca"], version), client_context(files["ca"], cert, key, version), "temporal"
    )
    assert_verify_error(outcome.server_error, CERT_HAS_EXPIRED)
    assert_alerted(outcome.client_error)


@pytest.mark.parametrize("version", TLS_VERSIONS, ids=["tls1.2", "tls1.3"])
def test_server_cert_used_as_client_cert_is_rejected(files, version):
    """The frontend cert has serverAuth only: presenting it as a client cert must fail."""
    outcome = handshake(
        # The server trusts the frontend cert's issuer here, so only the EKU can refuse it.
        server_context(*files["internode"], files["ca"], version),
        client_context(files["internode_ca"], *files["frontend"], version),
        "internode.temporal.internal",
    )
    assert_verify_error(outcome.server_error, INVALID_PURPOSE)
    assert_alerted(outcome.client_error)


def test_client_cert_used_as_server_cert_is_rejected(files, ec_bundle, tmp_path):
    """A clientAuth-only cert, even one carrying the right name, cannot serve."""
    leaf = ec_bundle.ca.issue_cert("temporal", usage="client")
    cert, key = write_leaf(tmp_path, "client-as-server", leaf)
    outcome = handshake(server_context(cert, key, files["client_ca"]), client_context(files["ca"], *files["client"]), "temporal")
    assert_verify_error(outcome.client_error, INVALID_PURPOSE)
    assert_alerted(outcome.server_error)


def test_two_ca_trust_file_accepts_a_server_on_the_new_ca(files, tmp_path):
    """CA rollover: a client trusting old+new CAs in one file accepts a server on either."""
    new_ca = CA.create("Next CA")
    cert, key = write_leaf(tmp_path, "next-frontend", new_ca.issue_cert("temporal", usage="server"))
    both = tmp_path / "both.pem"
    both.write_bytes(files["ca"].read_bytes() + new_ca.cert_pem())
    outcome = handshake(server_context(cert, key, files["client_ca"]), client_context(both, *files["client"]), "temporal")
    assert outcome.ok, outcome


@pytest.mark.parametrize("version", TLS_VERSIONS, ids=["tls1.2", "tls1.3"])
def test_no_certificate_of_another_domain_passes_an_internode_server(ec_bundle, files, version):
    """The internode server trusts the internode CA only: every client-usage leaf of the bundle
    (roles, UI, health check, database client, registrar) is refused by the server itself."""
    for spec in ec_bundle.specs():
        if spec.domain == "internode" or spec.usage == "server":
            continue
        outcome = handshake(
            server_context(*files["internode"], files["internode_ca"], version),
            client_context(files["internode_ca"], *ec_bundle.leaf_paths(spec.directory, spec.name), version),
            "internode.temporal.internal",
        )
        assert_verify_error(outcome.server_error, UNTRUSTED)
        assert_alerted(outcome.client_error)
