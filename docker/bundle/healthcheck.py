#!/usr/bin/env python3
"""TLS-aware health checks for the bundle's containers (exit 0 healthy, 1 not).

  bundle-healthcheck https URL --ca FILE [--cert F --key F] [--timeout S]
      GET URL over TLS, the certificate verified against FILE and the URL's host name;
      healthy on HTTP 200.
  bundle-healthcheck grpc-health HOST:PORT --ca FILE --cert F --key F --server-name NAME [--timeout S]
      gRPC health Check over mutual TLS (HTTP/2); healthy when the answer is SERVING (through
      the UI gate: the frontend's health, so the gate is healthy only when its upstream is).
  bundle-healthcheck tokens DIR
      every *.jwt in DIR has more than a third of its lifetime left (the refresher re-mints at
      two thirds, so anything older means it has stopped working).

Docker runs this every few seconds in several containers, so it imports only what its check
needs: no argparse, urllib or grpc (each costs more CPU than the check itself).
"""

from __future__ import annotations

import sys

USAGE = __doc__.split("\n\n")[1]
VALUED = {"--ca", "--cert", "--key", "--server-name", "--timeout"}


def parse(argv: list[str]) -> tuple[str, str, dict[str, str]]:
    """(check, target, options) from `CHECK TARGET [--name VALUE | --name=VALUE]...`."""
    positional, options = [], {}
    items = iter(argv)
    for item in items:
        if item.startswith("--"):
            name, has_value, value = item.partition("=")
            if name not in VALUED:
                raise ValueError(f"unknown option {name}")
            options[name] = value if has_value else next(items, None)
            if options[name] is None:
                raise ValueError(f"{name} needs a value")
        else:
            positional.append(item)
    if len(positional) != 2:
        raise ValueError("expected a check and its target")
    return positional[0], positional[1], options


def require(options: dict[str, str], *names: str) -> None:
    missing = [name for name in names if name not in options]
    if missing:
        raise ValueError(f"missing {' '.join(missing)}")


def check_https(url: str, options: dict[str, str]) -> str:
    import socket
    import ssl

    require(options, "--ca")
    if not url.startswith("https://"):
        raise ValueError(f"not an https URL: {url}")
    authority, _, path = url[len("https://"):].partition("/")
    host, _, port = authority.rpartition(":") if ":" in authority else (authority, "", "443")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the host name
    context.load_verify_locations(options["--ca"])
    if "--cert" in options:
        context.load_cert_chain(options["--cert"], options.get("--key"))
    timeout = float(options.get("--timeout", 5))
    with socket.create_connection((host, int(port)), timeout=timeout) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(f"GET /{path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n".encode())
            status_line = tls.makefile("rb").readline(200).decode("latin-1").strip()
    if status_line.split(" ")[1:2] != ["200"]:
        raise RuntimeError(f"answered {status_line!r}")
    return f"{url}: HTTP 200"


def check_grpc_health(target: str, options: dict[str, str]) -> str:
    """grpc.health.v1.Health/Check spoken directly over HTTP/2 (RFC 9113): importing grpc costs
    more CPU than the whole exchange. One stream; the answer's message is all that is read."""
    import socket
    import ssl

    require(options, "--ca", "--cert", "--key", "--server-name")
    host, _, port = target.rpartition(":")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(options["--ca"])
    context.load_cert_chain(options["--cert"], options["--key"])
    context.set_alpn_protocols(["h2"])
    with socket.create_connection((host, int(port)), timeout=float(options.get("--timeout", 5))) as raw:
        with context.wrap_socket(raw, server_hostname=options["--server-name"]) as tls:
            if tls.selected_alpn_protocol() != "h2":
                raise RuntimeError("the server does not speak HTTP/2")
            tls.sendall(_health_request(target))
            message = _health_answer(tls.makefile("rb"))
    if message != b"\x08\x01":  # HealthCheckResponse{status: SERVING}
        raise RuntimeError(f"not SERVING: {message!r}")
    return f"{target}: SERVING"


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x7
END_STREAM, END_HEADERS, PADDED = 0x1, 0x4, 0x8


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def _hpack_literal(name: str, value: str) -> bytes:
    """A header as 'literal without indexing, new name', no Huffman (RFC 7541 6.2.2)."""
    def string(text: str) -> bytes:
        raw = text.encode()
        if len(raw) < 127:
            return bytes([len(raw)]) + raw
        rest, prefix = len(raw) - 127, bytearray([127])
        while rest >= 128:
            prefix.append(rest % 128 + 128)
            rest //= 128
        return bytes(prefix) + bytes([rest]) + raw
    return b"\x00" + string(name) + string(value)


def _health_request(authority: str) -> bytes:
    headers = b"".join(_hpack_literal(name, value) for name, value in (
        (":method", "POST"), (":scheme", "https"), (":path", "/grpc.health.v1.Health/Check"),
        (":authority", authority), ("content-type", "application/grpc"), ("te", "trailers")))
    empty_request = b"\x00\x00\x00\x00\x00"  # uncompressed, 0 bytes: HealthCheckRequest{} (the whole server)
    return (H2_PREFACE + _frame(SETTINGS, 0, 0) + _frame(HEADERS, END_HEADERS, 1, headers)
            + _frame(DATA, END_STREAM, 1, empty_request))


def _health_answer(stream) -> bytes:
    """The response message of stream 1 (gRPC length prefix removed); b"" if there was none."""
    body = b""
    while True:
        head = stream.read(9)
        if len(head) < 9:
            raise RuntimeError("connection closed before the answer")
        length, kind, flags = int.from_bytes(head[:3], "big"), head[3], head[4]
        stream_id = int.from_bytes(head[5:], "big") & 0x7FFFFFFF
        payload = stream.read(length)
        if kind == GOAWAY or (kind == RST_STREAM and stream_id == 1):
            raise RuntimeError("the server closed the stream")
        if stream_id != 1 or kind not in (DATA, HEADERS):
            continue  # SETTINGS, WINDOW_UPDATE, PING: nothing this one exchange needs
        if kind == DATA:
            if flags & PADDED:
                payload = payload[1:len(payload) - payload[0]]
            body += payload
        if flags & END_STREAM:
            return body[5:]


def check_tokens(directory: str, options: dict[str, str]) -> str:
    import base64
    import json
    import os
    import time

    files = sorted(name for name in os.listdir(directory) if name.endswith(".jwt"))
    if not files:
        raise RuntimeError(f"no tokens in {directory}")
    now = time.time()
    for name in files:
        with open(os.path.join(directory, name)) as handle:
            payload = handle.read().strip().split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        issued, expires = int(claims["iat"]), int(claims["exp"])
        if now > expires - (expires - issued) / 3:
            raise RuntimeError(f"{name} expires at {time.ctime(expires)} and was not re-minted")
    return f"{len(files)} tokens fresh"


CHECKS = {"https": check_https, "grpc-health": check_grpc_health, "tokens": check_tokens}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 1
    try:
        check, target, options = parse(argv)
        if check not in CHECKS:
            raise ValueError(f"unknown check {check!r}")
    except ValueError as exc:
        print(f"bundle-healthcheck: {exc}\n{USAGE}", file=sys.stderr)
        return 1  # docker reserves 2; a wrong healthcheck line is simply unhealthy
    try:
        print(CHECKS[check](target, options))
        return 0
    except Exception as exc:  # any failure is simply "unhealthy"
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
