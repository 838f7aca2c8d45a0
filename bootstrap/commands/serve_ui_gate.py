"""serve-ui-gate: the gRPC gate between the Web UI server and the frontend (bootstrap/servers/gate.py)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from ..core.config import load_config
from ..errors import BundleError
from ..ops.oidc import jwks_cafiles
from ..store import Layout
from .common import add_config, add_out

HELP = "serve the gRPC gate the Web UI calls instead of the frontend, so namespace-only users can use it"
DESCRIPTION = """Forward the Web UI server's gRPC calls to the frontend unchanged (WorkflowService,
OperatorService, health check; anything else is UNIMPLEMENTED), each with the user's own token, so
the frontend authorizes every call. UI 2.58.1 needs GetClusterInfo and ListNamespaces before it
shows a page, and the frontend grants those only to temporal-system roles. When it refuses them to
a user whose token verifies (the key sources given by --jwks-url, jwt.audience, the issuers) and
names namespaces, the gate answers: GetClusterInfo with the answer register-namespaces recorded
(--cluster-info), ListNamespaces with DescribeNamespace of each namespace the token names, asked
upstream with the user's token. The gate holds no token.

TLS: ui-gate/server.{pem,key} to callers, who need a client-domain certificate
(trust/client/ca.pem: the UI's ui/client.pem); ui-gate/client.{pem,key} to the frontend, verified
with trust/ca.pem. Certificates are read at start: restart the gate after a rotation (make rotate
does).

Limits (any client-domain certificate reaches the gate): messages up to 4 MiB each way (the
frontend's own request limit); a call without a valid token is refused before its body is read
(but the health check and GetSystemInfo, which the frontend answers without one); message slots
as many as the container's memory limit (its cgroup's; 256m if none) holds at the worst case;
one certificate holds at most half of the slots and an eighth of --max-concurrent-calls; at most
32 connections, 16 streams each (the UI server queues its further calls itself)."""


def add_parser(sub, name):
    parser = sub.add_parser(name, help=HELP, description=DESCRIPTION,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config(parser)
    add_out(parser)
    option = parser.add_argument
    option("--host", default="0.0.0.0", help="address to listen on (default: 0.0.0.0)")
    option("--port", type=int, default=7233, help="port (default: 7233, the frontend's, so the UI needs no other change)")
    option("--upstream", help="frontend host:port (default: <frontend_host>:<frontend_port> from the config)")
    option("--jwks-url", action="append", required=True, metavar="URL",
           help="key source for the users' tokens (repeatable; the server's keySourceURIs: the bundle's JWKS "
           "and the OIDC provider's); https verified against the system CAs plus trust/ca.pem")
    option("--issuer", action="append", default=[], metavar="ISS",
           help="also accept tokens with this `iss` (repeatable; the OIDC provider's), besides jwt.issuer")
    option("--exchange-url", metavar="URL",
           help="the token exchange's /token: a person's Dex token is forwarded as the bundle token it gives "
           "(their groups mapped through oidc.groups, sub naming them); without it tokens go on as they are")
    option("--cluster-info", type=Path, required=True, metavar="FILE",
           help="the GetClusterInfo answer written by register-namespaces --cluster-info")
    option("--max-concurrent-calls", type=int, default=256,
           help="calls in flight at most, one certificate an eighth of them; more are refused with "
           "RESOURCE_EXHAUSTED (default: 256)")
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..servers.gate import GateTLS  # grpcio: only this command needs it

    config = load_config(args.config)
    layout = Layout(Path(args.out).resolve())
    if args.max_concurrent_calls < 1:
        raise BundleError("--max-concurrent-calls must be at least 1")
    budget = _budget(args)
    net = config.network
    upstream = args.upstream or f"{net.frontend_host}:{net.frontend_port}"
    server_cert, server_key = layout.leaf("ui-gate", "server")
    client_cert, client_key = layout.leaf("ui-gate", "client")
    tls = GateTLS(server_cert, server_key, layout.trust_files("client")[0], layout.trust_bundle,
                  net.frontend_host, client_cert, client_key)
    issuers = tuple(dict.fromkeys([config.jwt.issuer, *args.issuer]))
    return asyncio.run(_serve(args, tls, upstream, config, issuers, layout, budget))


def _budget(args):
    from ..servers.gate_budget import DEFAULT_MEMORY, GateBudget, container_memory

    memory = container_memory() or DEFAULT_MEMORY  # the container's limit (compose's mem_limit)
    try:
        return GateBudget(memory, args.max_concurrent_calls).checked()
    except ValueError as exc:
        raise BundleError(str(exc)) from None


async def _serve(args, tls, upstream: str, config, issuers: tuple[str, ...], layout: Layout, budget) -> int:
    from ..servers.auth import Authenticator, key_sources
    from ..servers.gate import start_gate

    sources = key_sources(None, tuple(args.jwks_url), jwks_cafiles(config, layout))
    auth = Authenticator(sources, config.jwt.audience, issuers)
    login = None
    if args.exchange_url and config.oidc.login_exchange:
        from ..servers.login_exchange import LoginExchange
        login = LoginExchange(args.exchange_url, jwks_cafiles(config, layout), config.oidc.login_issuer,
                              config.jwt.audience)
    try:
        gate = await start_gate(args.host, args.port, upstream, tls, auth, args.cluster_info, budget,
                                config.oidc.permissions_claim, login)
    except (OSError, RuntimeError) as exc:
        raise BundleError(f"cannot start the UI gate on {args.host}:{args.port}: {exc}") from None
    print(f"serving the UI gate on {args.host}:{gate.port} -> {upstream} (cluster info: {args.cluster_info}; "
          f"{budget.memory >> 20} MiB: {budget.slots} message slots, {budget.calls} calls, "
          f"{budget.connections} connections)", flush=True)
    try:
        await gate.server.wait_for_termination()
    finally:
        await gate.stop()
    return 0
