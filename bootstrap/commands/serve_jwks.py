"""serve-jwks: publish jwks.json over HTTPS with a certificate from our CA."""

from __future__ import annotations

from pathlib import Path

from ..errors import BundleError
from ..store import Layout
from .common import add_listen, add_max_connections, add_out, check_max_connections, serve_until_interrupted, start_service

HELP = "serve jwks.json over HTTPS (re-read on change) with /healthz"


def add_parser(sub, name):
    parser = sub.add_parser(name, help=HELP, description=HELP + ".")
    add_out(parser)
    add_listen(parser, "port (default: 8443)", 8443)
    parser.add_argument("--insecure-http", action="store_true", help="plain HTTP (local debugging only)")
    add_max_connections(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..servers.http import Limits  # aiohttp: only this command needs it
    from ..servers.jwks import make_server

    layout = Layout(Path(args.out).resolve())
    cert, key = (None, None) if args.insecure_http else layout.leaf("jwks", "server")
    if not layout.jwks.exists():
        raise BundleError(f"{layout.jwks} not found; run generate-certs first")
    check_max_connections(args.max_connections)
    server = start_service("JWKS server", args.host, args.port, lambda: make_server(
        args.host, args.port, layout.jwks, cert, key, Limits(max_connections=args.max_connections)))
    scheme = "http" if args.insecure_http else "https"
    print(f"serving {layout.jwks} at {scheme}://{args.host}:{args.port}/jwks.json", flush=True)
    return serve_until_interrupted(server)
