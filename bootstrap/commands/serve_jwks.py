"""serve-jwks: publish jwks.json over HTTPS with a certificate from our CA."""

from __future__ import annotations

import ssl
from pathlib import Path

from ..errors import BundleError
from ..servers import MAX_CONNECTIONS
from ..store import Layout
from .common import add_out, serve_until_interrupted

HELP = "serve jwks.json over HTTPS (re-read on change) with /healthz"


def add_parser(sub, name):
    parser = sub.add_parser(name, help=HELP, description=HELP + ".")
    add_out(parser)
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default: 0.0.0.0)")
    parser.add_argument("--port", type=int, default=8443, help="port (default: 8443)")
    parser.add_argument("--insecure-http", action="store_true", help="plain HTTP (local debugging only)")
    parser.add_argument("--max-connections", type=int, default=MAX_CONNECTIONS,
                        help=f"open connections at most; the oldest idle one makes room (default: {MAX_CONNECTIONS})")
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..servers.http import Limits  # aiohttp: only this command needs it
    from ..servers.jwks import make_server

    layout = Layout(Path(args.out).resolve())
    cert, key = (None, None) if args.insecure_http else layout.leaf("jwks", "server")
    if not layout.jwks.exists():
        raise BundleError(f"{layout.jwks} not found; run generate-certs first")
    if args.max_connections < 1:
        raise BundleError("--max-connections must be at least 1")
    try:
        server = make_server(args.host, args.port, layout.jwks, cert, key, Limits(max_connections=args.max_connections))
    except (OSError, ssl.SSLError) as exc:
        raise BundleError(f"cannot start JWKS server on {args.host}:{args.port}: {exc}") from None
    scheme = "http" if args.insecure_http else "https"
    print(f"serving {layout.jwks} at {scheme}://{args.host}:{args.port}/jwks.json", flush=True)
    return serve_until_interrupted(server)
