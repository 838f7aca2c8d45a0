"""generate-certs: the CA, every leaf certificate, the JWT signing key and the JWKS document."""

from __future__ import annotations

import sys

from ..core.pki import utcnow
from ..ops.generate import plan_generate
from ..store import apply, locked
from .common import load, report, standard

HELP = "create the CA, mTLS certificates, JWT signing key, jwks.json and payload data keys (existing ones are kept)"


def add_parser(sub, name):
    parser = sub.add_parser(name, help=HELP, description=HELP + ". Re-running with nothing to do changes nothing.")
    standard(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    config, layout = load(args)
    with locked(layout):
        result = plan_generate(config, layout, args.force, utcnow())
        report(layout, apply(layout, result.actions), args.quiet)
    if result.warning:
        print(result.warning, file=sys.stderr)
    return 0
