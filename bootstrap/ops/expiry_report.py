"""How an expiry Report is shown: the exit code it means, the table, the JSON document and the
Prometheus text exposition. Pure: everything returns text or data; the commands print it and
`write_prometheus` is the one write (through the store, atomically).

check-expiry, serve-expiry-metrics and mint-tokens --expiry-metrics all render from here, so the
table, the exporter and the token textfile say the same thing.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

from ..core.config import MonitoringConfig, load_config
from ..core.durations import human_duration, parse_duration
from ..store import CERT_MODE, write_atomic
from .expiry import CRITICAL, EXPIRED, OK, STATUSES, UNREADABLE, WARNING, Finding, Jwks, Report, Thresholds

EXIT_CODES = {OK: 0, WARNING: 1, CRITICAL: 2, EXPIRED: 2, UNREADABLE: 3}
UNKNOWN = EXIT_CODES[UNREADABLE]
COLUMNS = ("NAME", "KIND", "SUBJECT", "KID", "PERMISSIONS", "NOT-AFTER", "LEFT", "STATUS", "NOTE")


def thresholds_from(warn: str | None, crit: str | None, config: str | None, default_config: str | None) -> Thresholds:
    """--warn/--crit, else bundle.yaml's monitoring thresholds (the alert rules' own). An explicit
    config must exist; the default one (the image's path) may be absent: then 7d and 1d."""
    if not config and default_config and Path(default_config).exists():
        config = default_config
    monitoring = load_config(config).monitoring if config else MonitoringConfig()
    return Thresholds(
        parse_duration(warn, "--warn") if warn else monitoring.expiry_warn,
        parse_duration(crit, "--crit") if crit else monitoring.expiry_crit,
    )


def exit_code(report: Report) -> int:
    return EXIT_CODES[report.worst]


def errors(report: Report) -> list[str]:
    """What made the check itself incomplete (unreadable files are rows in the table instead)."""
    found = [report.error] if report.error else []
    if report.jwks is not None and report.jwks.error:
        found.append(f"JWKS {report.jwks.url}: {report.jwks.error}")
    return found


# --- table -----------------------------------------------------------------------------------


def table_text(report: Report) -> str:
    rows = [COLUMNS] + [tuple(one_line(cell) for cell in table_row(f)) for f in report.findings]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    if report.jwks is not None:
        lines.append(jwks_line(report))
    lines.append("summary: " + ", ".join(f"{report.count(s)} {s}" for s in STATUSES))
    return "\n".join(lines)


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


def json_text(report: Report, code: int) -> str:
    return json.dumps(json_document(report, code), indent=2)


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


def write_prometheus(path: Path, report: Report, code: int) -> None:
    """For node_exporter's textfile collector: atomic, so a scrape never reads half a file; mode
    0644, so the collector's user can read it. Raises OSError."""
    write_atomic(path, prometheus_text(report, code).encode(), CERT_MODE)


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
