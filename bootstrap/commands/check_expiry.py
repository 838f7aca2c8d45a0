"""check-expiry: when do the bundle's certificates and tokens expire, and would the server still
accept the tokens? Modelled on `step certificate needs-renewal`, with monitoring exit codes.

The checking lives in bootstrap.ops.expiry, the rendering and exit codes in bootstrap.ops.expiry_report;
this module parses, prints and returns the exit code.
It handles its own errors: the generic CLI's exit 1 for a BundleError means "warning" here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..core.durations import parse_duration
from ..core.pki import utcnow
from ..errors import BundleError
from ..ops.expiry import Report, check, fetch_jwks
from ..ops.expiry_report import UNKNOWN, errors, exit_code, json_text, table_text
from .common import add_out, thresholds_of, write_prometheus

HELP = "report when certificates and tokens expire (exit 0 ok, 1 warning, 2 critical, 3 unreadable)"

DESCRIPTION = """\
Report when the bundle's certificates and tokens expire, like `step certificate needs-renewal`.

Reads every *.pem certificate (one row per certificate, so a bundle such as trust/ca.pem gives
several) and every *.jwt token under DIR, recursively. Private keys are never opened: *.key files
are not read, and private/ is skipped except for its CA certificate ca.pem. Dotfiles (the lock,
temporary files) are ignored. Tokens are decoded without verification; with --jwks-url each
token's kid is looked up in the JWKS the server fetches and its signature checked against the
published key."""

EPILOG = """\
status of each row:
  ok          at least --warn left
  warning     less than --warn left
  critical    less than --crit left; or, with --jwks-url, a token the server would reject
              (its kid is not published, or its signature does not verify with the published key)
  expired     past its not-after (certificates) or exp (tokens)
  unreadable  garbage, truncated or unreadable file or directory; a token without exp
  A threshold never exceeds a share of the item's own lifetime (--warn 1/3, --crit 1/10), so a
  1h token refreshed at two thirds of its life warns with 20m left, not from the start.

exit codes (the highest applicable wins: 3 > 2 > 1 > 0; 3 means the check itself is incomplete,
so it wins even over an expired certificate):
  0  every certificate and token is ok
  1  at least one warning
  2  at least one critical or expired
  3  unreadable input: a file is unreadable, truncated or garbage; DIR is missing, unreadable or
     holds no certificate or token; the JWKS URL cannot be fetched or is not a JWKS; an invalid
     threshold (e.g. --crit longer than --warn); the --prometheus file cannot be written
  A command-line usage error (unknown option, missing value) also exits 3, never 2.

metrics (--prometheus FILE, for node_exporter's textfile collector; written atomically, mode 0644):
  temporal_bundle_expiry_seconds{name,kind,subject}            seconds left, negative once expired
  temporal_bundle_expiry_timestamp_seconds{name,kind,subject}  not-after as Unix time
  temporal_bundle_lifetime_seconds{name,kind,subject}          not-after minus not-before (iat for
                                                               tokens); +Inf when unknown
  temporal_bundle_item_status{name,kind,subject}               0 ok, 1 warning, 2 critical or
                                                               expired, 3 unreadable
  temporal_bundle_items{status}                                rows per status, incl. unreadable
  temporal_bundle_jwks_up{url}                                 1 if the JWKS was fetched (--jwks-url)
  temporal_bundle_jwks_keys{url}                               kids published in the JWKS
  temporal_bundle_check_status                                 this run's exit code
  temporal_bundle_check_timestamp_seconds                      when this run checked (Unix time)"""


def add_parser(sub, name):
    parser = sub.add_parser(
        name, help=HELP, description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_out(parser)
    option = parser.add_argument
    option("directory", nargs="?", metavar="DIR", help="directory to check (default: --out)")
    option("--config", metavar="FILE",
           help="bundle.yaml whose monitoring.expiry_warn/expiry_crit are the defaults of --warn/--crit, "
           "the thresholds the Prometheus alert rules use too (default: env BUNDLE_CONFIG if that file "
           "exists; without one: 7d and 1d)")
    option("--warn", metavar="DURATION", help="warning when less than this is left (default: monitoring.expiry_warn)")
    option("--crit", metavar="DURATION", help="critical when less than this is left (default: monitoring.expiry_crit)")
    option("--jwks-url", metavar="URL", help="also check every token's kid against this JWKS")
    option("--ca-file", type=Path, metavar="FILE", help="CA to trust for an https --jwks-url (default: DIR/trust/ca.pem)")
    option("--timeout", default="10s", metavar="DURATION", help="timeout for fetching --jwks-url (default: 10s)")
    option("--json", action="store_true", help="print a JSON document instead of the table")
    option("--prometheus", type=Path, metavar="FILE", help="also write the results as Prometheus metrics to FILE")
    parser.set_defaults(run=run, usage_error_code=UNKNOWN)


def run(args) -> int:
    try:
        report = build_report(args)
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return UNKNOWN
    code = exit_code(report)
    show(report, code, args.json)
    if args.prometheus is not None:
        return write_prometheus(args.prometheus, report, code)
    return code


def build_report(args) -> Report:
    thresholds = thresholds_of(args)
    directory = Path(args.directory or args.out).resolve()
    jwks = None
    if args.jwks_url:
        ca_file = args.ca_file or directory / "trust" / "ca.pem"
        jwks = fetch_jwks(args.jwks_url, ca_file, parse_duration(args.timeout, "--timeout"))
    return check(directory, utcnow(), thresholds, jwks)


def show(report: Report, code: int, as_json: bool) -> None:
    for problem in errors(report):
        print(f"error: {problem}", file=sys.stderr)
    if as_json:
        print(json_text(report, code))
    elif report.error is None:
        print(table_text(report))
