#!/usr/bin/env python3
"""TLS-aware health checks for the bundle's containers (exit 0 healthy, 1 not).

  bundle-healthcheck https URL --ca FILE [--cert F --key F] [--timeout S]
      GET URL over TLS, the certificate verified against FILE and the URL's host name;
      healthy on HTTP 200.
  bundle-healthcheck grpc-health HOST:PORT --ca FILE --cert F --key F --server-name NAME [--timeout S]
      gRPC health Check over mutual TLS; healthy when the answer is SERVING (through the UI
      gate: the frontend's health, so the gate is healthy only when its upstream is).
  bundle-healthcheck tokens DIR
      every *.jwt in DIR has more than a third of its lifetime left (the refresher re-mints at
      two thirds, so anything older means it has stopped working).

Docker runs this every few seconds in several containers, so it imports only what its check
needs: no argparse or urllib (they cost more CPU than the check itself), grpc only for gRPC.
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
    import grpc  # the bundle image's venv has it (the UI gate)

    require(options, "--ca", "--cert", "--key", "--server-name")
    read = lambda name: open(options[name], "rb").read()  # noqa: E731
    credentials = grpc.ssl_channel_credentials(read("--ca"), read("--key"), read("--cert"))
    channel_options = [("grpc.ssl_target_name_override", options["--server-name"])]
    with grpc.secure_channel(target, credentials, options=channel_options) as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check")
        # An empty HealthCheckRequest: the whole server.
        answer = check(b"", timeout=float(options.get("--timeout", 5)))
    if answer != b"\x08\x01":  # HealthCheckResponse{status: SERVING}
        raise RuntimeError(f"not SERVING: {answer!r}")
    return f"{target}: SERVING"


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
