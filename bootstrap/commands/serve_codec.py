"""serve-codec: Temporal's remote codec endpoints over HTTPS, decrypting only for authorized tokens."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from ..core.backend import codec_kek_for_serving
from ..core.config import check_origin, load_config
from ..errors import BundleError
from ..ops.oidc import jwks_cafiles, login_mapping
from ..store import Layout
from .common import (add_config, add_listen, add_max_connections, add_out, check_max_connections, serve_until_interrupted,
                     start_service)

HELP = "serve /encode and /decode (Temporal's codec protocol) over HTTPS for the Web UI and CLI"
DESCRIPTION = """Serve Temporal's remote codec protocol (POST /encode, POST /decode, GET /healthz)
over HTTPS with the codec/server certificate, using each namespace's data keys in
codec-keys/keys.json, unwrapped in memory with the KEK (codec-kek/kek.key, or the PKCS#11 token
under keys.backend pkcs11).

Every request needs a bearer JWT the bundle's JWKS verifies (else 401; issuer jwt.issuer, plus any
--issuer) and some role on the X-Namespace namespace (else 403), checked before the body is read.
/decode returns a payload's plaintext only when it is bound to the X-Namespace namespace and the
token holds codec.decrypt_role (default admin) there or on temporal-system; a payload bound to
another namespace is refused even for a system admin; payloads written before namespaces were
bound need temporal-system. Other payloads come back still encrypted. /encode
needs write. CORS preflights are answered for codec.ui_origins only. Keys, JWKS and certificate
are re-read when they change: rotations need no restart. One JSON audit line per request."""


def add_parser(sub, name):
    parser = sub.add_parser(
        name, help=HELP, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config(parser)
    add_out(parser)
    option = parser.add_argument
    add_listen(parser, "port (default: codec.port from the config, 8888)")
    option("--jwks-url", action="append", metavar="URL",
           help="verify tokens against this JWKS URL instead of jwks/jwks.json (repeatable: e.g. the bundle's "
           "https://jwks:8443/jwks.json and your OIDC provider's, for Web UI users); https is verified against "
           "the system CAs plus trust/ca.pem. Lets the container run without jwks/, which holds "
           "the JWKS server's private key")
    option("--ui-origin", action="append", metavar="ORIGIN",
           help="allowed CORS origin (repeatable; default: codec.ui_origins from the config)")
    option("--insecure-http", action="store_true",
           help="plain HTTP (local debugging only: the Web UI refuses to send tokens to http endpoints)")
    option("--issuer", action="append", default=[], metavar="ISS",
           help="also accept tokens with this `iss` (repeatable; e.g. your OIDC provider's, with its --jwks-url)")
    add_max_connections(parser, None, "open connections at most; the oldest idle one makes room (default: what the "
                        "container's 256 MB allows, 256; each may cost ~250 KB, so raise the memory limit with it)")
    option("--quiet-audit", action="store_true", help="do not log one line per encode/decode request")
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..servers.codec import LIMITS, Policy, make_server  # needs the SDK and aiohttp; other commands do not

    config = load_config(args.config)
    layout = Layout(Path(args.out).resolve())
    origins = tuple(check_origin(o, "--ui-origin") for o in args.ui_origin) if args.ui_origin else config.codec.ui_origins
    issuers = tuple(dict.fromkeys([config.jwt.issuer, *args.issuer]))
    policy = Policy(config.jwt.audience, config.codec.decrypt_role, origins, issuers, config.oidc.permissions_claim,
                    login_mapping(config), system_may_fetch_keys=config.codec.system_may_fetch_keys)
    check_max_connections(args.max_connections)
    limits = replace(LIMITS, max_connections=args.max_connections or LIMITS.max_connections)
    port = args.port or config.codec.port
    cert, key = (None, None) if args.insecure_http else layout.leaf("codec", "server")
    if not args.jwks_url and not layout.jwks.exists():
        raise BundleError(f"{layout.jwks} not found; run generate-certs first, or pass --jwks-url")
    server = start_service("the codec server", args.host, port, lambda: make_server(
        args.host, port, keys_path=layout.codec_keys, kek=codec_kek_for_serving(config, layout), policy=policy,
        jwks_path=layout.jwks,
        jwks_urls=tuple(args.jwks_url or ()), jwks_cafile=jwks_cafiles(config, layout), cert=cert, key=key,
        audit=not args.quiet_audit, limits=limits,
    ))
    scheme = "http" if args.insecure_http else "https"
    print(
        f"serving the codec at {scheme}://{args.host}:{port} (decrypts for {policy.decrypt_role}; "
        f"CORS origins: {', '.join(origins)}; JWKS: {server.jwks.description})",
        flush=True,
    )
    return serve_until_interrupted(server)
