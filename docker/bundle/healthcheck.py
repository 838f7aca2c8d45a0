#!/usr/bin/env python3
"""TLS-aware health checks for the bundle's containers (exit 0 healthy, 1 not).

  bundle-healthcheck https URL --ca FILE [--cert F --key F]
      GET URL over TLS, the certificate verified against FILE and the URL's host name;
      healthy on HTTP 200.
  bundle-healthcheck grpc-health HOST:PORT --ca FILE --cert F --key F --server-name NAME
      gRPC health Check over mutual TLS; healthy when the answer is SERVING (through the UI
      gate: the frontend's health, so the gate is healthy only when its upstream is).
  bundle-healthcheck tokens DIR
      every *.jwt in DIR has more than a third of its lifetime left (the refresher re-mints at
      two thirds, so anything older means it has stopped working).
"""

from __future__ import annotations

import argparse
import base64
import json
import ssl
import sys
import time
import urllib.request
from pathlib import Path


def check_https(args) -> str:
    ctx = ssl.create_default_context(cafile=args.ca)
    if args.cert:
        ctx.load_cert_chain(args.cert, args.key)
    with urllib.request.urlopen(args.url, timeout=args.timeout, context=ctx) as response:
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}")
        return f"{args.url}: HTTP 200"


def check_grpc_health(args) -> str:
    import grpc  # the bundle image's venv has it (the UI gate)

    credentials = grpc.ssl_channel_credentials(Path(args.ca).read_bytes(), Path(args.key).read_bytes(),
                                               Path(args.cert).read_bytes())
    options = [("grpc.ssl_target_name_override", args.server_name)]
    with grpc.secure_channel(args.target, credentials, options=options) as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check")
        answer = check(b"", timeout=args.timeout)  # an empty HealthCheckRequest: the whole server
    if answer != b"\x08\x01":  # HealthCheckResponse{status: SERVING}
        raise RuntimeError(f"not SERVING: {answer!r}")
    return f"{args.target}: SERVING"


def check_tokens(args) -> str:
    files = sorted(Path(args.dir).glob("*.jwt"))
    if not files:
        raise RuntimeError(f"no tokens in {args.dir}")
    now = time.time()
    for path in files:
        payload = path.read_text().strip().split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        issued, expires = int(claims["iat"]), int(claims["exp"])
        if now > expires - (expires - issued) / 3:
            raise RuntimeError(f"{path.name} expires at {time.ctime(expires)} and was not re-minted")
    return f"{len(files)} tokens fresh"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bundle-healthcheck")
    sub = parser.add_subparsers(dest="check", required=True)
    https = sub.add_parser("https")
    https.add_argument("url")
    https.add_argument("--ca", required=True)
    https.add_argument("--cert")
    https.add_argument("--key")
    https.add_argument("--timeout", type=float, default=5.0)
    health = sub.add_parser("grpc-health")
    health.add_argument("target")
    for name in ("--ca", "--cert", "--key", "--server-name"):
        health.add_argument(name, required=True)
    health.add_argument("--timeout", type=float, default=5.0)
    tokens = sub.add_parser("tokens")
    tokens.add_argument("dir")
    args = parser.parse_args(argv)
    try:
        checks = {"https": check_https, "grpc-health": check_grpc_health, "tokens": check_tokens}
        print(checks[args.check](args))
        return 0
    except Exception as exc:  # any failure is simply "unhealthy"
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
