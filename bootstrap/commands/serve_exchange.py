"""serve-exchange: the workload-identity token exchange (RFC 8693) over HTTPS."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.config import load_config
from ..errors import BundleError
from ..ops.oidc import login_policy
from ..ops.plan import load_exchange_key
from ..store import Layout
from .common import (add_config, add_listen, add_max_connections, add_out, check_max_connections, serve_until_interrupted,
                     start_service)

HELP = "exchange workloads' service-account tokens for short-lived Temporal tokens (RFC 8693) over HTTPS"
DESCRIPTION = """Serve POST /token (RFC 8693 token exchange) and GET /healthz over HTTPS with the
exchange/server certificate. A subject token from an issuer in workload_identity.issuers, verified
against that issuer's OIDC discovery and JWKS (iss, aud, exp, nbf, signature, kubernetes.io claims),
is exchanged for a Temporal token signed with exchange/signing.key (a key used for nothing else,
published in jwks.json; re-read when `rotate --kind exchange-key` replaces it, no restart) holding the permissions the bindings grant, valid for
workload_identity.token_lifetime and never past the subject token's own expiry.
Mounts: exchange/ (its TLS pair and signing key) and the issuers' CA files; nothing else."""


def add_parser(sub, name):
    parser = sub.add_parser(name, help=HELP, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config(parser)
    add_out(parser)
    add_listen(parser, "port (default: workload_identity.port, 8444)")
    add_max_connections(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..servers.exchange import ExchangePolicy, make_server  # aiohttp: only this command needs it
    from ..servers.http import Limits

    config = load_config(args.config)
    workload = config.workload_identity
    if not workload.enabled and not config.oidc.login_exchange:
        raise BundleError(f"{config.source}: neither workload_identity nor oidc.connectors (nor oidc.groups with oidc.external) "
                          "is configured; nothing to serve")
    layout = Layout(Path(args.out).resolve())
    key = load_exchange_key(layout)
    if key is None:
        raise BundleError(f"{layout.exchange_signing_key} not found; run generate-certs first")
    check_max_connections(args.max_connections)
    cert, tls_key = layout.leaf("exchange", "server")
    policy = ExchangePolicy(workload, tuple(ns.name for ns in config.namespaces), config.jwt.issuer, config.jwt.audience,
                            login_policy(config, layout))
    port = args.port or workload.port
    server = start_service("the token exchange", args.host, port, lambda: make_server(
        args.host, port, policy=policy, key_file=layout.exchange_signing_key, cert=cert, tls_key=tls_key,
        limits=Limits(max_connections=args.max_connections)))
    issuers = ", ".join(f"{i.name} ({i.issuer})" for i in (*workload.issuers, *((policy.login.issuer,) if policy.login else ())))
    print(f"serving the token exchange at https://{args.host}:{port}/token (kid {key.kid}; issuers: {issuers})", flush=True)
    return serve_until_interrupted(server)
