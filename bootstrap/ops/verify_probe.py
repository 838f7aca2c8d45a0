"""verify's TLS probes: one connection per (listener, credential) pair, standard library only.

Outcomes of one probe:
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

import concurrent.futures
import functools
import socket
import ssl
import struct
import time

from ..core.verify_plan import Credential, Pair, Probe

CONNECT_TIMEOUT = 4.0
HANDSHAKE_TIMEOUT = 8.0
READ_TIMEOUT = 6.0  # an admitted gRPC/HTTPS peer answers within milliseconds; an alert too
MEMBERSHIP_SILENCE = 3.0  # TChannel waits for our init request: silence this long = admitted
# Listeners are probed in parallel, each one's pairs in turn: never two connections at once to one
# listener, so a per-peer connection limit cannot turn an admitted pair into a refused one.
WORKERS = 6
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + empty SETTINGS
SSL_REQUEST = struct.pack("!ii", 8, 80877103)


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
