"""mint-tokens: one JWT per role into tokens/, re-minted only when stale (2/3 of lifetime)."""

from __future__ import annotations

import sys
import time

from ..pki import utcnow
from ..plan import active_signing_key, load_published_keys, plan_tokens
from ..store import apply, locked
from .common import load, report, standard

HELP = "mint role tokens (system, worker, client, ...) signed with the active key"


def add_parser(sub, name):
    parser = sub.add_parser(
        name,
        help=HELP,
        description=HELP + ". A token is re-minted when it is past two thirds of its lifetime, signed "
        "by another key, or its permissions changed; otherwise it is kept.",
    )
    standard(parser)
    parser.add_argument("--role", action="append", help="only this role (repeatable; default: all roles)")
    parser.add_argument(
        "--watch",
        type=float,
        metavar="SECONDS",
        help="keep running as a token refresher: re-check every SECONDS and re-mint tokens past two "
        "thirds of their lifetime (clients re-read the files; see bootstrap.client.TokenFileWatcher)",
    )
    parser.set_defaults(run=run)


def plan(config, layout, force, now, role_names=None):
    roles = [config.role(name) for name in role_names] if role_names else None
    key = active_signing_key(layout, load_published_keys(layout))
    actions, _ = plan_tokens(config, layout, key, force, now, roles)
    return actions


def run(args) -> int:
    config, layout = load(args)
    for name in args.role or ():
        config.role(name)  # an unknown role fails before the lock creates the output directory
    while True:
        with locked(layout):
            report(layout, apply(layout, plan(config, layout, args.force, utcnow(), args.role)), args.quiet or bool(args.watch))
        if not args.watch:
            return 0
        sys.stdout.flush()
        time.sleep(args.watch)
