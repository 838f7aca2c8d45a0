"""check-expiry: when do the bundle's certificates and tokens expire, and would the server still
accept the tokens? Modelled on `step certificate needs-renewal`, with monitoring exit codes.

The checking lives in bootstrap.expiry; this module only shows the report and picks the exit code.
It handles its own errors: the generic CLI's exit 1 for a BundleError means "warning" here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime, timedelta
from pathlib import Path

from ..core.config import MonitoringConfig, load_config
from ..core.durations import human_duration, parse_duration
from ..errors import BundleError
from ..ops.expiry import (
    CRITICAL, EXPIRED, OK, STATUSES, UNREADABLE, WARNING, Finding, Jwks, Report, Thresholds, check, fetch_jwks,
)
from ..core.pki import utcnow
from ..store import CERT_MODE, write_atomic
from .common import add_out

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

EXIT_CODES = {OK: 0, WARNING: 1, CRITICAL: 2, EXPIRED: 2, UNREADABLE: 3}
UNKNOWN = EXIT_CODES[UNREADABLE]
COLUMNS = ("NAME", "KIND", "SUBJECT", "KID", "PERMISSIONS", "NOT-AFTER", "LEFT", "STATUS", "NOTE")


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


def thresholds_of(args) -> Thresholds:
    """--warn/--crit, else bundle.yaml's monitoring thresholds (the alert rules' own)."""
    config = args.config or os.environ.get("BUNDLE_CONFIG")
    if not args.config and config and not Path(config).exists():
        config = None  # the image's default path with no bundle.yaml mounted: a plain directory check
    monitoring = load_config(config).monitoring if config else MonitoringConfig()
    warn = parse_duration(args.warn, "--warn") if args.warn else monitoring.expiry_warn
    crit = parse_duration(args.crit, "--crit") if args.crit else monitoring.expiry_crit
    return Thresholds(warn, crit)


def build_report(args) -> Report:
    thresholds = thresholds_of(args)
    directory = Path(args.directory or args.out).resolve()
    jwks = None
    if args.jwks_url:
        ca_file = args.ca_file or directory / "trust" / "ca.pem"
        jwks = fetch_jwks(args.jwks_url, ca_file, parse_duration(args.timeout, "--timeout"))
    return check(directory, utcnow(), thresholds, jwks)


def exit_code(report: Report) -> int:
    return EXIT_CODES[report.worst]


def errors(report: Report) -> list[str]:
    """What made the check itself incomplete (unreadable files are rows in the table instead)."""
    found = [report.error] if report.error else []
    if report.jwks is not None and report.jwks.error:
        found.append(f"JWKS {report.jwks.url}: {report.jwks.error}")
    return found


def show(report: Report, code: int, as_json: bool) -> None:
    for problem in errors(report):
        print(f"error: {problem}", file=sys.stderr)
    if as_json:
        print(json.dumps(json_document(report, code), indent=2))
    elif report.error is None:
        print_table(report)


# --- table -----------------------------------------------------------------------------------


def print_table(report: Report) -> None:
    rows = [COLUMNS] + [tuple(one_line(cell) for cell in table_row(f)) for f in report.findings]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    if report.jwks is not None:
        print(jwks_line(report))
    print("summary: " + ", ".join(f"{report.count(s)} {s}" for s in STATUSES))


def table_row(finding: Finding) -> tuple[str, ...]:
    item = finding.item
    return (
        item.name,
        item.kind,
        item.subject or "-",
        item.kid or "-",
        ",".join(item.permissions) or "-",
        iso(item.not_after) if item.not_after else "-",
        human_duration(finding.time_left) if finding.time_left is not None else "-",
        finding.status,
        "; ".join(finding.notes),
    )


def one_line(cell: str) -> str:
    """A token's sub or a certificate's CN may hold newlines or tabs; they must not break the table."""
    return " ".join(cell.split())


def jwks_line(report: Report) -> str:
    jwks = report.jwks
    if jwks.error:
        return f"jwks {jwks.url}: unavailable ({jwks.error})"
    return f"jwks {jwks.url}: published kids: {', '.join(jwks.kids) or '(none)'}"


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# --- JSON ------------------------------------------------------------------------------------


def json_document(report: Report, code: int) -> dict:
    return {
        "directory": str(report.directory),
        "checked_at": iso(report.checked_at),
        "thresholds": {
            "warn_seconds": seconds(report.thresholds.warn),
            "crit_seconds": seconds(report.thresholds.crit),
        },
        "status": report.worst,
        "exit_code": code,
        "error": report.error,
        "counts": {s: report.count(s) for s in STATUSES},
        "items": [json_item(f) for f in report.findings],
        "jwks": None if report.jwks is None else json_jwks(report.jwks),
    }


def json_jwks(jwks: Jwks) -> dict:
    return {"url": jwks.url, "kids": list(jwks.kids), "error": jwks.error}


def json_item(finding: Finding) -> dict:
    item = finding.item
    return {
        "name": item.name,
        "kind": item.kind,
        "subject": item.subject or None,
        "kid": item.kid,
        "permissions": list(item.permissions),
        "not_after": iso(item.not_after) if item.not_after else None,
        "seconds_left": seconds(finding.time_left) if finding.time_left is not None else None,
        "time_left": human_duration(finding.time_left) if finding.time_left is not None else None,
        "status": finding.status,
        "notes": list(finding.notes),
    }


def seconds(delta: timedelta) -> int:
    return int(delta.total_seconds())


# --- Prometheus ------------------------------------------------------------------------------


def write_prometheus(path: Path, report: Report, code: int) -> int:
    try:
        write_atomic(path, prometheus_text(report, code).encode(), CERT_MODE)
    except OSError as exc:
        print(f"error: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
        return UNKNOWN
    return code


def prometheus_text(report: Report, code: int) -> str:
    lines: list[str] = []
    item_metrics(lines, report)
    gauge(lines, "temporal_bundle_items", "Certificates and tokens per status.",
          [({"status": s}, report.count(s)) for s in STATUSES])
    if report.jwks is not None:
        jwks_metrics(lines, report)
    gauge(lines, "temporal_bundle_check_status", "Exit code: 0 ok, 1 warning, 2 critical, 3 unreadable.",
          [({}, code)])
    gauge(lines, "temporal_bundle_check_timestamp_seconds", "When check-expiry ran, as Unix time.",
          [({}, int(report.checked_at.timestamp()))])
    return "\n".join(lines) + "\n"


def item_metrics(lines: list[str], report: Report) -> None:
    readable = [f for f in report.findings if f.time_left is not None]
    gauge(lines, "temporal_bundle_expiry_seconds", "Seconds until it expires (negative once expired).",
          [(item_labels(f), seconds(f.time_left)) for f in readable])
    gauge(lines, "temporal_bundle_expiry_timestamp_seconds", "When the certificate or token expires, as Unix time.",
          [(item_labels(f), int(f.item.not_after.timestamp())) for f in readable])
    gauge(lines, "temporal_bundle_lifetime_seconds", "Its whole lifetime; +Inf when unknown (thresholds then apply unshared).",
          [(item_labels(f), lifetime_value(f)) for f in readable])
    gauge(lines, "temporal_bundle_item_status", "0 ok, 1 warning, 2 critical or expired, 3 unreadable.",
          [(item_labels(f), EXIT_CODES[f.status]) for f in report.findings])


def lifetime_value(finding: Finding) -> int | str:
    lifetime = finding.item.lifetime
    if lifetime is None or lifetime <= timedelta(0):  # Thresholds.for_lifetime leaves them unshared
        return "+Inf"
    return seconds(lifetime)


def jwks_metrics(lines: list[str], report: Report) -> None:
    labels = {"url": report.jwks.url}
    gauge(lines, "temporal_bundle_jwks_up", "1 if the JWKS URL was fetched and parsed, else 0.",
          [(labels, 0 if report.jwks.error else 1)])
    gauge(lines, "temporal_bundle_jwks_keys", "Key ids published in the JWKS.", [(labels, len(report.jwks.kids))])


def item_labels(finding: Finding) -> dict:
    return {"name": finding.item.name, "kind": finding.item.kind, "subject": finding.item.subject}


def gauge(lines: list[str], name: str, help_text: str, samples: list[tuple[dict, int | str]]) -> None:
    lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
    lines += [f"{name}{label_text(labels)} {value}" for labels, value in samples]


def label_text(labels: dict) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{escape(str(value))}"' for key, value in labels.items()) + "}"


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
