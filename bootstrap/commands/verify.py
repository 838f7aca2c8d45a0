"""verify: attack a running deployment from the outside and say which pair was wrongly admitted or
refused. The probing lives in bootstrap.ops.verify; this module parses, prints and picks the exit code."""

from __future__ import annotations

import argparse
import json

from ..core.verify_plan import TOKEN_ATTACKS, VANTAGES, parse_route
from ..errors import BundleError
from .common import add_config, add_out, load

HELP = "attack the running deployment: every listener x every credential, and forged tokens (exit 1 if any pair is wrong)"
DESCRIPTION = """\
Attack the RUNNING deployment from outside: every listener of the security model (the README's
table) with every credential: each certificate the bundle issues, one from a foreign CA, an
expired one from each trust domain's own CA (this needs the CA keys: run it where private/ is
mounted), and none. From where it runs (--from) it also knows which listeners it must NOT reach.
Where the frontend is reachable, tokens too: none, expired, unknown kid, forged signature, no kid,
alg none, tampered, wrong audience and wrong namespace must be denied; a valid one accepted.
Nothing is written to the bundle; no token or key is printed."""
EPILOG = """\
vantage points (--from):
""" + "\n".join(f"  {name:<11} " + ("the listeners named by --listener-host (reachable) and --listener-blocked (not)"
                                     if v.routed else f"reaches {', '.join(v.reachable)}; must not reach "
                                     f"{', '.join(v.unreachable) or '-'}") for name, v in VANTAGES.items()) + """

token attacks:
""" + "\n".join(f"  {name:<17} {what}" for name, what in TOKEN_ATTACKS.items()) + """

exit codes:
  0  every pair as the security model says (and at least one pair tried)
  1  a pair wrongly admitted or refused, a pair not tried in time, or an error
"""


def add_parser(sub, name):
    parser = sub.add_parser(name, help=HELP, description=DESCRIPTION, epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config(parser)
    add_out(parser)
    parser.add_argument("--from", dest="vantage", choices=sorted(VANTAGES), default="edge",
                        help="the network verify runs on (default: edge, where applications sit)")
    parser.add_argument("--host", help="connect every listener at this address instead of its service name "
                        "(--from host: one machine runs everything, e.g. 127.0.0.1)")
    parser.add_argument("--services", help="comma-separated services that run (make verify passes compose's list); "
                        "listeners of others are reported as not checked")
    parser.add_argument("--listener-host", action="append", default=[], metavar="LISTENER=HOST[:PORT]",
                        help="probe this listener there, where it must be reachable (repeatable; --from kubernetes: "
                        "the export's verify Job names every listener it checks)")
    parser.add_argument("--listener-blocked", action="append", default=[], metavar="LISTENER=HOST[:PORT]",
                        help="probe this listener there, where it must NOT be reachable (repeatable; --from kubernetes: "
                        "what the export's NetworkPolicies keep from the Job's pod)")
    parser.add_argument("--without-keys", action="store_true",
                        help="no CA or signing key here (the Kubernetes Job): present the certificates found under "
                        "--out, skip expired certificates and the token attacks that need the signing key")
    parser.add_argument("--no-tokens", action="store_true", help="skip the token attacks on the frontend")
    parser.add_argument("--deadline", type=float, default=600.0, help="seconds for the whole matrix (default: 600)")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout instead of the table")
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..ops.verify import verify

    if args.deadline <= 0:
        raise BundleError("--deadline must be positive")
    services = {s.strip() for s in args.services.split(",") if s.strip()} if args.services is not None else None
    routes = dict([parse_route(text, True) for text in args.listener_host]
                  + [parse_route(text, False) for text in args.listener_blocked])
    if VANTAGES[args.vantage].routed and not routes:
        raise BundleError(f"--from {args.vantage} checks only the listeners named with --listener-host/--listener-blocked")
    # With keys the backend is activated: the expired certificates are signed by the CAs.
    config, layout = load(args, keys=not args.without_keys)
    report = verify(config, layout, args.vantage, host=args.host, services=services, tokens=not args.no_tokens,
                    deadline_s=args.deadline, routes=routes, without_keys=args.without_keys)
    if args.json:
        print(json.dumps(report.as_dict(), indent=1))
    else:
        print_table(report)
    return 0 if report.passed else 1


def print_table(report) -> None:
    widths = [max([len(h)] + [len(getattr(r, a)) for r in report.rows])
              for h, a in (("listener", "listener"), ("credential", "credential"), ("expected", "expected"))]
    header = ("listener", "credential", "expected")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)) + "  result  got")
    for row in report.rows:
        cells = (row.listener, row.credential, row.expected)
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths)) + f"  {'OK    ' if row.ok else 'WRONG '}  {row.got}")
    for skipped in report.skipped:
        print(f"not checked: {skipped.listener}: {skipped.reason}")
    for name in report.unprovable:
        print(f"WRONG: {name}: no credential it must admit, or none it must refuse: the matrix proves nothing there")
    wrong = report.wrong
    print(f"verify from {report.vantage}: {len(report.rows)} pairs, {len(wrong)} wrong, "
          f"{len(report.skipped)} listeners not checked from here, {report.seconds:.0f}s")
    for row in wrong:
        print(f"WRONG: {row.listener} <- {row.credential}: expected {row.expected}, got {row.got}")
