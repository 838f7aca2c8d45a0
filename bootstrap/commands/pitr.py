"""pitr: check a point-in-time recovery target against the pgBackRest repository and print the
restore options (`make restore-pitr TIME=...` runs it before anything is stopped or written).

Reads the repository's `pgbackrest info --output=json` (a file, or - for stdin), prints
pgbackrest restore's options on stdout, one per line, and what will happen on stderr. A target
the repository cannot reach is one `error:` line and exit 1.
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone

from ..errors import BundleError
from ..ops.pgbackrest import STANZA
from ..ops.pitr import parse_archive_end, parse_info, parse_target, plan_pitr

HELP = "check a point-in-time recovery TIME against the pgBackRest repository; print the restore options"


def add_parser(sub, name):
    parser = sub.add_parser(name, help=HELP, description=__doc__.split("\n\n", 1)[1])
    option = parser.add_argument
    option("--time", required=True, metavar="TIME",
           help="'latest' (the end of the archived WAL) or a time with its offset, e.g. '2026-12-06 10:40:00+00'")
    option("--info", required=True, metavar="FILE", help="pgbackrest info --output=json of the repository (- for stdin)")
    option("--stanza", default=STANZA, help=f"the pgBackRest stanza (default: {STANZA})")
    parser.set_defaults(run=run)


def run(args) -> int:
    target = parse_target(args.time)
    try:
        text = sys.stdin.read() if args.info == "-" else open(args.info, encoding="utf-8").read()
    except OSError as exc:
        raise BundleError(f"cannot read {args.info}: {exc.strerror or exc}") from None
    plan = plan_pitr(parse_info(text, args.stanza), target, datetime.now(timezone.utc),
                     parse_archive_end(text, args.stanza))
    print(f"pitr: {plan.describe()}", file=sys.stderr)
    print("\n".join(plan.pgbackrest_args()))
    return 0
