#!/usr/bin/env python3
"""Health checks for the bundle's containers that no installed tool does (exit 0 healthy, 1 not).

  bundle-healthcheck https URL --ca FILE
      GET URL over TLS, the certificate verified against FILE and the URL's host name;
      healthy on HTTP 200.
  bundle-healthcheck tokens DIR
      every *.jwt in DIR has more than a third of its lifetime left (the refresher re-mints at
      two thirds, so anything older means it has stopped working).

gRPC health checks are grpc-health-probe's (in the image; see docker-compose.prod.yml).
Docker runs this every few seconds in several containers, so it imports only what its check
needs: no argparse or urllib.
"""

from __future__ import annotations

import sys

USAGE = __doc__.split("\n\n")[1]
TIMEOUT_S = 5


def check_https(url: str, ca: str) -> str:
    import socket
    import ssl

    if not url.startswith("https://"):
        raise ValueError(f"not an https URL: {url}")
    authority, _, path = url[len("https://"):].partition("/")
    host, _, port = authority.rpartition(":") if ":" in authority else (authority, "", "443")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the host name
    context.load_verify_locations(ca)
    with socket.create_connection((host, int(port)), timeout=TIMEOUT_S) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(f"GET /{path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n".encode())
            status_line = tls.makefile("rb").readline(200).decode("latin-1").strip()
    if status_line.split(" ")[1:2] != ["200"]:
        raise RuntimeError(f"answered {status_line!r}")
    return f"{url}: HTTP 200"


def check_tokens(directory: str) -> str:
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


def parse(argv: list[str]):
    """The check to run, as a call without arguments: `https URL --ca FILE` (or `--ca=FILE`),
    `tokens DIR`; anything else is a ValueError."""
    match argv:
        case ["https", url, "--ca", ca]:
            return lambda: check_https(url, ca)
        case ["https", url, option] if option.startswith("--ca="):
            return lambda: check_https(url, option.removeprefix("--ca="))
        case ["tokens", directory]:
            return lambda: check_tokens(directory)
    raise ValueError("unknown check or wrong arguments")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 1
    try:
        check = parse(argv)
    except ValueError as exc:
        print(f"bundle-healthcheck: {exc}\n{USAGE}", file=sys.stderr)
        return 1  # docker reserves 2; a wrong healthcheck line is simply unhealthy
    try:
        print(check())
        return 0
    except Exception as exc:  # any failure is simply "unhealthy"
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
