"""Every listener of the real server x every credential, from the attacker's side.

Listeners and what each must admit come from bootstrap/core/security_model.py (the README's table);
credentials are every certificate the bundle issues (server certs used as client certs too), one
from a foreign CA, an expired one from each domain's own CA, and none. The client always verifies
the server with the roots that listener really presents, so a refusal is the server's refusal.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest

from bootstrap.core.config import load_config
from bootstrap.core.security_model import LISTENERS
from bootstrap.store import Layout
from tests.support.trust_domains import Credential, client_context, probe_tls, run_matrix


def test_every_listener_admits_exactly_its_own_trust_domain(cluster, tmp_path):
    tried, wrong = run_matrix(cluster, tmp_path)
    print(f"\ntrust-domain matrix ({cluster.driver}): {tried} listener x credential pairs tried, {len(wrong)} wrong")
    assert tried >= 150
    assert not wrong, "\n".join(wrong)


def test_the_same_holds_when_the_cas_live_in_a_token(on_token, tmp_path):
    """keys.backend pkcs11: every certificate was signed inside a SoftHSM2 token, and so are the
    expired ones made here; the listeners must still tell the domains apart."""
    tried, wrong = run_matrix(on_token, tmp_path)
    assert tried >= 150
    assert not wrong, "\n".join(wrong)


def test_internal_frontend_http_api_is_not_listening(cluster):
    net = load_config(cluster.config_path).network
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", net.internal_frontend_http_port), timeout=3).close()


def test_metrics_answer_only_on_loopback_in_plaintext(cluster):
    net = load_config(cluster.config_path).network
    assert net.internal_bind_ip == "127.0.0.1"
    with socket.create_connection(("127.0.0.1", net.metrics_port), timeout=3) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(12).startswith(b"HTTP/1.1 200")


def test_internal_listeners_bind_to_loopback_only(cluster):
    """Read the kernel's table of listening sockets: nothing internal listens beyond 127.0.0.1."""
    net = load_config(cluster.config_path).network
    listening = _listening_sockets()
    for listener in LISTENERS:
        if listener.reach == "container":
            port = listener.port_number(net)
            assert listening.get(port) == {"127.0.0.1"}, (listener.name, listening.get(port))


def _listening_sockets() -> dict[int, set[str]]:
    found: dict[int, set[str]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            address, port = fields[1].split(":")
            found.setdefault(int(port, 16), set()).add(_ip(address))
    return found


def _ip(hex_address: str) -> str:
    if len(hex_address) == 8:
        return socket.inet_ntop(socket.AF_INET, bytes.fromhex(hex_address)[::-1])
    raw = bytes.fromhex(hex_address)
    return socket.inet_ntop(socket.AF_INET6, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))


def test_the_probe_can_tell_admitted_from_refused(sqlite_cluster, tmp_path):
    """Guard against a matrix that cannot fail: the same probe admits the internode cert on
    history and refuses the client cert there, and verifying the server with the wrong roots is
    an error of the test, never counted as a refusal."""
    layout, net = Layout(sqlite_cluster.bundle), load_config(sqlite_cluster.config_path).network
    internode_ca, name = layout.trust_files("internode")[0], net.internode_server_name
    inside = Credential("internode", *layout.leaf("server", "internode"), "internode", "both")
    outside = Credential("client", *layout.leaf("clients", "client"), "client")
    assert probe_tls(net.history_port, name, client_context(internode_ca, inside)) == "admitted"
    assert probe_tls(net.history_port, name, client_context(internode_ca, outside)) == "refused"
    with pytest.raises(ssl.SSLCertVerificationError):
        probe_tls(net.history_port, name, client_context(layout.trust_files("server")[0], inside))
