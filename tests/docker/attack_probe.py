"""Runs INSIDE the attacker's container (the bundle image, on the compose `edge` network only, with
the bundle's certificate volumes and the test's forged certificates mounted read-only); standard
library only, except `temporal` (the CLI) for the namespace attempts.

    python3 -m tests.docker.attack_probe matrix PLAN.json      every (listener, credential) probe
    python3 -m tests.docker.attack_probe namespaces PLAN.json  namespace creation attempts

PLAN.json is written by tests/docker/test_edge_attacks.py, which also holds the expectations:
this side only reports what happened, as one JSON object on stdout.

Outcomes of one probe:
    unreachable: ...         name does not resolve, connection refused, no route, connect timeout
    admitted                 TLS handshake done and the server answered the bytes sent after it
                             (gRPC: its HTTP/2 SETTINGS; HTTPS: an HTTP response); membership
                             (TChannel over TLS) says nothing first, so silence without an alert
    refused: ...             a TLS alert, a reset or EOF, during or after the handshake (with TLS
                             1.3 the server's verdict on the client cert arrives after it)
    client-verify-error: ... OUR check of the server's certificate failed: the probe used the wrong
                             roots or the server presents the wrong cert; never a valid answer
    plaintext-http           plain HTTP answered (plaintext listeners)
    silent / error: ...      anything else; never a valid answer either
Every probe is bounded (connect, handshake and read timeouts) and the whole run by a deadline:
pairs not tried in time are reported as "not tried".
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import socket
import ssl
import struct
import subprocess
import sys
import time

CONNECT_TIMEOUT = 4.0
HANDSHAKE_TIMEOUT = 8.0
READ_TIMEOUT = 6.0  # an admitted gRPC/HTTPS peer answers within milliseconds; an alert too
MEMBERSHIP_SILENCE = 3.0  # TChannel waits for our init request: silence this long = admitted
RESOLVE_TIMEOUT = 15.0

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + empty SETTINGS

_resolved: dict[str, object] = {}
_resolver = concurrent.futures.ThreadPoolExecutor(max_workers=2)


def resolve(host: str):
    """The address of host, or an "unreachable: ..." string; once per host (every pair of an
    unresolvable host gets the same answer without waiting for the resolver again)."""
    if host not in _resolved:
        future = _resolver.submit(socket.getaddrinfo, host, None, socket.AF_INET, socket.SOCK_STREAM)
        try:
            _resolved[host] = future.result(timeout=RESOLVE_TIMEOUT)[0][4][0]
        except concurrent.futures.TimeoutError:
            _resolved[host] = "unreachable: name resolution timed out"
        except socket.gaierror as exc:
            _resolved[host] = f"unreachable: name does not resolve ({exc.strerror})"
    return _resolved[host]


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


def _context(probe: dict) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the server: cert chain + hostname
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cafile=probe["verify_ca"])
    if probe.get("cert"):
        context.load_cert_chain(probe["cert"], probe["key"])
    if probe["mode"] == "grpc":
        context.set_alpn_protocols(["h2"])  # gRPC servers refuse a client that offers no h2
    elif probe["mode"] == "https":
        context.set_alpn_protocols(["http/1.1"])
    return context


def _refusal(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"refused: {exc.reason or exc}"
    return f"refused: {type(exc).__name__}"


def probe_tls(probe: dict) -> str:
    try:
        context = _context(probe)
    except (OSError, ssl.SSLError) as exc:
        return f"error: loading credentials: {exc}"
    raw = connect(probe["host"], probe["port"])
    if isinstance(raw, str):
        return raw
    with raw:
        try:
            if probe["mode"] == "postgres":
                raw.settimeout(READ_TIMEOUT)
                raw.sendall(struct.pack("!ii", 8, 80877103))  # SSLRequest
                if raw.recv(1) != b"S":
                    return "error: PostgreSQL refused to start TLS"
            raw.settimeout(HANDSHAKE_TIMEOUT)
            tls = context.wrap_socket(raw, server_hostname=probe["server_name"])
        except ssl.SSLCertVerificationError as exc:
            return f"client-verify-error: {exc.verify_message}"
        except socket.timeout:
            return "silent: handshake timed out"
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError, ConnectionAbortedError) as exc:
            return _refusal(exc)
        except OSError as exc:
            return f"error: handshake: {exc}"
        with tls:
            mode = probe["mode"]
            try:
                if mode == "grpc":
                    tls.sendall(H2_PREFACE)
                elif mode == "https":
                    tls.sendall(f"GET / HTTP/1.1\r\nHost: {probe['server_name']}\r\nConnection: close\r\n\r\n".encode())
                elif mode == "postgres":
                    params = b"user\x00" + probe.get("db_user", "temporal").encode() + b"\x00database\x00postgres\x00\x00"
                    tls.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)
                tls.settimeout(MEMBERSHIP_SILENCE if mode == "membership" else READ_TIMEOUT)
                data = tls.recv(64)
            except socket.timeout:
                return "admitted" if mode == "membership" else "silent: no answer after the handshake"
            except (ssl.SSLError, ConnectionResetError, BrokenPipeError, ConnectionAbortedError) as exc:
                return _refusal(exc)
            except OSError as exc:
                return f"error: after handshake: {exc}"
            if not data:
                return "refused: EOF"
            if mode == "grpc":
                # An HTTP/2 frame header: 3 bytes length, type 4 = SETTINGS.
                return "admitted" if len(data) >= 4 and data[3] == 4 else f"error: not HTTP/2: {data[:16]!r}"
            if mode == "https":
                return "admitted" if data.startswith(b"HTTP/") else f"error: not HTTP: {data[:16]!r}"
            if mode == "postgres":
                # R = authentication request/ok, E = an error after TLS (pg_hba, cert auth).
                return "admitted" if data[:1] == b"R" else f"refused: PostgreSQL said {data[:1]!r}"
            return f"error: membership spoke first: {data[:16]!r}"


def probe_plaintext(probe: dict) -> str:
    raw = connect(probe["host"], probe["port"])
    if isinstance(raw, str):
        return raw
    with raw:
        try:
            raw.settimeout(READ_TIMEOUT)
            raw.sendall(f"GET / HTTP/1.1\r\nHost: {probe['host']}\r\nConnection: close\r\n\r\n".encode())
            data = raw.recv(64)
        except socket.timeout:
            return "silent: no answer to plain HTTP"
        except OSError as exc:
            return f"refused: {type(exc).__name__}"
    return "plaintext-http" if data.startswith(b"HTTP/") else f"error: not HTTP: {data[:16]!r}"


def matrix(plan: dict) -> dict:
    deadline = time.monotonic() + plan["deadline_s"]
    results = {}
    for probe in plan["probes"][: plan["max_pairs"]]:
        if time.monotonic() > deadline:
            results[probe["id"]] = "not tried: deadline"
            continue
        started = time.monotonic()
        results[probe["id"]] = probe_plaintext(probe) if probe["mode"] == "plaintext" else probe_tls(probe)
        results[probe["id"] + "#s"] = round(time.monotonic() - started, 3)
    return {"ok": True, "results": results}


def namespaces(plan: dict) -> dict:
    """`temporal operator ...` attempts: each {id, argv, token_file?}; exit code and output."""
    out = {}
    env = {**os.environ, "HOME": "/tmp"}
    for attempt in plan["attempts"]:
        argv = list(attempt["argv"])
        if attempt.get("token_file"):
            with open(attempt["token_file"]) as f:
                argv += ["--api-key", f.read().strip()]
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=attempt.get("timeout", 60), env=env)
            out[attempt["id"]] = {"exit": result.returncode, "output": (result.stdout + result.stderr)[-1500:]}
        except subprocess.TimeoutExpired:
            out[attempt["id"]] = {"exit": None, "output": "timed out"}
    return {"ok": True, "results": out}


def main() -> int:
    command, plan_path = sys.argv[1:3]
    with open(plan_path) as f:
        plan = json.load(f)
    out = matrix(plan) if command == "matrix" else namespaces(plan)
    print(json.dumps(out))
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
