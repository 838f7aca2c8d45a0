"""rotate: leaf certs, the JWT or token exchange signing key, the CA or the payload data key,
without downtime, in resumable phases."""

from __future__ import annotations

import argparse
import time

from ..core.pki import utcnow
from ..ops.rotation import KINDS, current_kind, step
from ..store import apply, locked
from .common import load, report, standard

HELP = "rotate leaf certs, the JWT or token exchange signing key, the CA or the payload data key without downtime"
DESCRIPTION = """Rotate without downtime. Each run advances the rotation as far as it can and says
which phase it is in and what it waits for; run it again (or pass --wait) to finish. A run killed
at any point is completed by the next one.

  --kind certs        re-issue leaf certs due within pki.renew_before (all with --all) from the
                      current CA; the server re-reads them (tls refreshInterval), no restart.
  --kind signing-key  publish a new key beside the old in jwks.json; after jwt.refresh_interval
                      make it active and re-mint tokens; after the longest token lifetime retire
                      the old key.
  --kind exchange-key the token exchange's signing key, in the same three phases: publish a new
                      key beside the old; after jwt.refresh_interval the exchange signs with it
                      (it re-reads exchange/signing.key, no restart); after
                      workload_identity.token_lifetime retire the old key. Workers keep running.
  --kind ca           every trust domain (server, client, internode, database) at once: trust
                      old+new CA; then re-issue the leaves from the new CAs; then drop the old.
  --kind trust-domains  a bundle made before trust domains, where one CA signs everything: the
                      client, internode and database domains get CAs of their own in the same
                      three phases (the server CA, which clients verify with, stays). Run it
                      under load: nothing fails; restart `temporal` once afterwards (it keeps
                      the database client certificate it started with).
  --kind codec-key    add a new payload data key to each namespace's ring in codec-keys/keys.json
                      (--namespace NS: only those) and make it the one that encrypts; old keys
                      stay for decoding. Codecs re-read the file, no restart.
"""
EPILOG = """exit codes:
  0  the rotation finished, or advanced and is waiting (the output says until when)
  1  bad input or state (corrupt files, another kind of rotation in progress)
"""


def add_parser(sub, name):
    parser = sub.add_parser(
        name, help=HELP, description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    standard(parser, force=False)
    parser.add_argument("--kind", choices=KINDS, help="what to rotate (default: the rotation in progress)")
    parser.add_argument("--all", action="store_true", help="with --kind certs: re-issue every leaf, due or not")
    parser.add_argument("--namespace", action="append", metavar="NS",
                        help="with --kind codec-key: rotate this namespace's data key (repeatable; default: all)")
    parser.add_argument("--wait", action="store_true", help="sleep through the waits until the rotation is done")
    parser.add_argument(
        "--probe-address",
        metavar="HOST:PORT",
        help="before activating a new signing or exchange key, prove the frontend at HOST:PORT accepts it "
        "(mTLS with the system cert, a short-lived token signed by the new key)",
    )
    parser.add_argument("--server-name", help="TLS server name for --probe-address (default: frontend_host)")
    parser.set_defaults(run=run)


def run(args) -> int:
    config, layout = load(args)
    while True:
        with locked(layout):
            kind = current_kind(layout, args.kind)
            result = step(config, layout, kind, utcnow(), args.all, _probe(args, config, layout), args.namespace)
            report(layout, apply(layout, result.actions), args.quiet)
        print(f"rotation {result.kind}: {result.message}")
        if result.done:
            return 0
        print(f"rotation {result.kind}: phase {result.phase}, waiting for {result.waiting_for}", flush=True)
        if result.due is None:  # waits for the operator, not for a clock
            return 0
        if not args.wait:
            print(f"rotation {result.kind}: run `rotate` again after that to continue")
            return 0
        args.kind = kind
        time.sleep(max(1.0, (result.due - utcnow()).total_seconds()))


def _probe(args, config, layout):
    if not args.probe_address:
        return None
    from ..ops.namespaces import server_accepts_key

    server_name = args.server_name or config.network.frontend_host
    return lambda key: server_accepts_key(config, layout.root, key, args.probe_address, server_name)
