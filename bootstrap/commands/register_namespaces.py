"""register-namespaces: wait for the frontend, then register the configured namespaces."""

from __future__ import annotations

import asyncio
from pathlib import Path

from ..client import RoleCredentials
from ..core.config import CLUSTER_INFO_KEY
from ..ops.namespaces import register_all
from ..errors import BundleError
from ..store import write_atomic
from .common import add_config, add_out, load

HELP = "wait for the frontend (mTLS health check) and register the configured namespaces"
EPILOG = """exit codes:
  0  every namespace exists (registered now or before); retention drift is reported, not fatal
  1  the frontend did not become ready in time, or TLS / authorization / the server refused
"""


def add_parser(sub, name):
    import argparse

    parser = sub.add_parser(
        name, help=HELP, description=HELP + ".", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config(parser)
    add_out(parser)
    parser.add_argument("--address", help="frontend host:port (default: <frontend_host>:<frontend_port> from config)")
    parser.add_argument("--server-name", help="TLS server name (default: frontend_host from config)")
    parser.add_argument("--role", default="system", help="role whose cert and token are used (default: system)")
    parser.add_argument(
        "--registrar",
        action="store_true",
        help="use registrar/system.{pem,key,jwt}, the system credentials kept for this job alone "
        "(what the compose job mounts: no other role's key or token)",
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the frontend (default: 120)")
    parser.add_argument("--update-retention", action="store_true", help="apply retention drift to the server")
    parser.add_argument(
        "--cluster-info",
        type=Path,
        metavar="FILE",
        help="also write the frontend's GetClusterInfo answer (JSON) to FILE, for serve-ui-gate: the UI gate "
        "answers that call for users whose roles name namespaces only, without a system token of its own",
    )
    parser.add_argument(
        "--cluster-info-configmap",
        metavar="NAME",
        help="inside a Kubernetes pod: put the same answer into ConfigMap NAME of the pod's namespace (key "
        f"{CLUSTER_INFO_KEY}), through the API server with the pod's service account (export-helm's Job does)",
    )
    parser.set_defaults(run=run)


def run(args) -> int:
    config, layout = load(args, keys=False)
    config.role(args.role)  # unknown role: clear error before any network traffic
    api = None
    if args.cluster_info_configmap:
        from ..ops.kube_secrets import ApiServer  # urllib's HTTP stack: only the Kubernetes Job needs it

        api = ApiServer.in_cluster("--cluster-info-configmap")
    if args.registrar:
        creds = RoleCredentials.load(layout.root, "system", cert_dir="registrar", token_dir="registrar")
    else:
        creds = RoleCredentials.load(layout.root, args.role)
    net = config.network
    target = args.address or f"{net.frontend_host}:{net.frontend_port}"
    server_name = args.server_name or net.frontend_host
    registration = asyncio.run(register_all(config, creds, target, server_name, args.timeout, args.update_retention))
    print(f"frontend {target} ready after {registration.frontend_ready_s:.1f}s")
    for outcome in registration.outcomes:
        print(f"namespace {outcome.namespace}: {outcome.action}: {outcome.detail}".rstrip(": "))
    print(f"namespaces usable after {registration.usable_s:.1f}s")
    if args.cluster_info is not None:
        try:
            write_atomic(args.cluster_info, (registration.cluster_info + "\n").encode(), 0o644)
        except OSError as exc:
            raise BundleError(f"cannot write {args.cluster_info}: {exc.strerror or exc}") from None
        print(f"cluster info written to {args.cluster_info}")
    if api is not None:
        api.patch_configmap(args.cluster_info_configmap, {CLUSTER_INFO_KEY: registration.cluster_info + "\n"})
        print(f"cluster info written to ConfigMap {api.namespace}/{args.cluster_info_configmap}")
    return 0
