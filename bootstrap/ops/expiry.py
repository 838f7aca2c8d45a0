"""What check-expiry knows: every certificate and token in a bundle directory, judged against
warning/critical thresholds and, optionally, against the JWKS the server fetches.

Modelled on `step certificate needs-renewal`. Nothing here prints: `scan` (expiry_scan.py) and
`fetch_jwks` read, `evaluate` judges, `check` does both into a Report; expiry_report.py shows it
and says which exit code it means. An unreadable file never raises; it becomes an item with a
problem.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import jwt

from ..core.durations import human_duration, parse_duration
from ..core.tokens import jwk_algorithm
from ..errors import BundleError
from .expiry_scan import Item, scan

OK, WARNING, CRITICAL, EXPIRED, UNREADABLE = "ok", "warning", "critical", "expired", "unreadable"
STATUSES = (OK, WARNING, CRITICAL, EXPIRED, UNREADABLE)  # in rising severity
# A threshold never exceeds this share of an item's own lifetime, so short-lived tokens (the
# bundle refreshes them at two thirds of their life, step's default too) are judged by their own
# clock instead of being permanently "critical" under a 1d threshold.
WARN_SHARE, CRIT_SHARE = 1 / 3, 1 / 10
MAX_JWKS_BYTES = 1 << 20


@dataclass(frozen=True)
class Thresholds:
    warn: timedelta
    crit: timedelta

    def __post_init__(self):
        if self.crit > self.warn:
            raise BundleError(
                f"--crit {human_duration(self.crit)} must not be longer than --warn {human_duration(self.warn)}"
            )

    @classmethod
    def parse(cls, warn: str, crit: str) -> "Thresholds":
        return cls(parse_duration(warn, "--warn"), parse_duration(crit, "--crit"))

    def for_lifetime(self, lifetime: timedelta | None) -> "Thresholds":
        if lifetime is None or lifetime <= timedelta(0):
            return self
        return Thresholds(min(self.warn, lifetime * WARN_SHARE), min(self.crit, lifetime * CRIT_SHARE))


@dataclass(frozen=True)
class Jwks:
    url: str
    keys: dict = field(default_factory=dict)  # kid -> JWK
    error: str | None = None

    @property
    def kids(self) -> tuple[str, ...]:
        return tuple(sorted(self.keys))


@dataclass(frozen=True)
class Finding:
    item: Item
    status: str
    time_left: timedelta | None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Report:
    directory: Path
    checked_at: datetime
    thresholds: Thresholds
    findings: tuple[Finding, ...]
    jwks: Jwks | None = None
    error: str | None = None  # the directory itself could not be read

    @property
    def worst(self) -> str:
        statuses = [f.status for f in self.findings]
        if self.error or (self.jwks and self.jwks.error):
            statuses.append(UNREADABLE)
        return max(statuses, key=STATUSES.index, default=OK)

    def count(self, status: str) -> int:
        return sum(1 for f in self.findings if f.status == status)


# --- the JWKS the server fetches -------------------------------------------------------------


def fetch_jwks(url: str, ca_file: Path, timeout: timedelta) -> Jwks:
    """The published keys, or a Jwks with `error` set; never raises for network or content errors."""
    try:
        return Jwks(url, keys_by_kid(fetch_document(url, ca_file, timeout)))
    except BundleError as exc:
        return Jwks(url, error=str(exc))


def fetch_document(url: str, ca_file: Path, timeout: timedelta) -> dict:
    """The bundle's one HTTPS JSON fetch (servers/fetch.py), trusting ca_file alone, within
    `timeout` overall; a failure is a BundleError saying why."""
    from ..servers.fetch import FetchError, FetchLimits, FetchTimeout, JSONFetcher  # aiohttp: only with a JWKS URL

    scheme = url.split("://", 1)[0].lower()
    if scheme not in ("http", "https"):
        raise BundleError(f"unsupported JWKS URL {url!r} (http:// or https:// only)")
    if scheme == "https" and not ca_file.is_file():
        raise BundleError(f"CA file {ca_file} not found (use --ca-file)")
    seconds = timeout.total_seconds()
    fetcher = JSONFetcher((ca_file,), limits=FetchLimits(MAX_JWKS_BYTES, total=seconds, idle=seconds), system_cas=False)

    async def once() -> dict:
        try:
            return await fetcher.get(url)
        finally:
            await fetcher.close()

    try:
        return asyncio.run(once())
    except FetchTimeout as exc:
        raise BundleError(f"cannot fetch: timed out ({exc})") from None
    except FetchError as exc:
        raise BundleError(f"cannot fetch: {exc}") from None


def keys_by_kid(document: object) -> dict:
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise BundleError("the JWKS URL did not return a JWKS document")
    return {k["kid"]: k for k in document["keys"] if isinstance(k, dict) and isinstance(k.get("kid"), str)}


# --- judging ---------------------------------------------------------------------------------


def check(directory: Path, now: datetime, thresholds: Thresholds, jwks: Jwks | None = None) -> Report:
    """Scan and judge; a missing or unreadable directory gives a report with `error` set."""
    try:
        items = scan(directory)
    except BundleError as exc:
        return Report(directory, now, thresholds, (), jwks, error=str(exc))
    return Report(directory, now, thresholds, evaluate(items, now, thresholds, jwks), jwks)


def evaluate(items: list[Item], now: datetime, thresholds: Thresholds, jwks: Jwks | None = None) -> tuple[Finding, ...]:
    return tuple(judge(item, now, thresholds, jwks) for item in items)


def judge(item: Item, now: datetime, thresholds: Thresholds, jwks: Jwks | None) -> Finding:
    if item.problem is not None or item.not_after is None:
        return Finding(item, UNREADABLE, None, (item.problem or "no expiry",))
    left = item.not_after - now
    status, notes = expiry_status(left, thresholds.for_lifetime(item.lifetime)), []
    if item.kind == "token" and jwks is not None and jwks.error is None:
        problem = jwks_problem(item, jwks)
        if problem:
            status, notes = max(status, CRITICAL, key=STATUSES.index), [problem]
    return Finding(item, status, left, tuple(notes))


def expiry_status(left: timedelta, thresholds: Thresholds) -> str:
    if left <= timedelta(0):
        return EXPIRED
    if left < thresholds.crit:
        return CRITICAL
    if left < thresholds.warn:
        return WARNING
    return OK


def jwks_problem(token: Item, jwks: Jwks) -> str | None:
    """Why the server would reject this token's signature, or None."""
    if token.kid is None:
        return "token has no kid header"
    if token.kid not in jwks.keys:
        return f"kid {token.kid} is not published in the JWKS"
    try:
        jwk = jwks.keys[token.kid]
        algorithm = jwk_algorithm(jwk)
        key = jwt.PyJWK(jwk, algorithm or None).key
        options = {"verify_exp": False, "verify_nbf": False, "verify_iat": False, "verify_aud": False}
        jwt.decode(token.encoded, key, algorithms=[a for a in ("ES256", "RS256") if a == algorithm], options=options)
    except jwt.PyJWTError as exc:
        return f"signature does not verify with the published key {token.kid}: {exc}"
    return None


__all__ = [
    "CRITICAL",
    "EXPIRED",
    "OK",
    "STATUSES",
    "UNREADABLE",
    "WARNING",
    "Finding",
    "Item",
    "Jwks",
    "Report",
    "Thresholds",
    "check",
    "evaluate",
    "fetch_jwks",
    "scan",
]
