"""What check-expiry knows: every certificate and token in a bundle directory, judged against
warning/critical thresholds and, optionally, against the JWKS the server fetches.

Modelled on `step certificate needs-renewal`. Nothing here prints: `scan` and `fetch_jwks` read,
`evaluate` judges, `check` does both into a Report; expiry_report.py shows it and says which
exit code it means. An unreadable file never raises; it becomes an item with a problem.
"""

from __future__ import annotations

import base64
import json
import contextlib
import os
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import jwt
from cryptography import x509
from cryptography.x509.oid import NameOID

from ..core.durations import human_duration, parse_duration
from ..errors import BundleError
from ..core.pki import load_certs
from ..core.tokens import decode_unverified, jwk_algorithm

OK, WARNING, CRITICAL, EXPIRED, UNREADABLE = "ok", "warning", "critical", "expired", "unreadable"
STATUSES = (OK, WARNING, CRITICAL, EXPIRED, UNREADABLE)  # in rising severity
CERT_SUFFIX, TOKEN_SUFFIX = ".pem", ".jwt"
# Only the CA certificates (one per trust domain, plus a rotation's next CAs) are read from
# private/; the keys there are never opened.
PRIVATE_DIR, PRIVATE_CA_GLOB = "private", "ca*.pem"
# A threshold never exceeds this share of an item's own lifetime, so short-lived tokens (the
# bundle refreshes them at two thirds of their life, step's default too) are judged by their own
# clock instead of being permanently "critical" under a 1d threshold.
WARN_SHARE, CRIT_SHARE = 1 / 3, 1 / 10
MAX_JWKS_BYTES = 1 << 20
SIGNATURE_BYTES = {"ES256": 64}
MIN_RSA_SIGNATURE_BYTES = 256


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
class Item:
    """One certificate or token as found on disk; `problem` is set when it could not be read."""

    name: str
    kind: str  # ca, cert, token
    subject: str = ""
    not_after: datetime | None = None
    lifetime: timedelta | None = None
    kid: str | None = None
    algorithm: str | None = None
    permissions: tuple[str, ...] = ()
    encoded: str = ""
    problem: str | None = None


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


# --- reading the directory -------------------------------------------------------------------


def scan(directory: Path) -> list[Item]:
    """Every *.pem certificate (one item per certificate) and *.jwt token under `directory`.

    Raises BundleError when the directory itself is missing or unreadable; anything below it that
    cannot be read becomes an item with a problem.
    """
    check_directory(directory)
    items: list[Item] = []
    for path in candidate_files(directory, items):
        items.extend(read_item(path, relative_name(path, directory)))
    if not items:
        # An empty directory is most often a volume that was not mounted: never report "all ok".
        raise BundleError(f"no certificates (*.pem) or tokens (*.jwt) under {directory}")
    return items


def check_directory(directory: Path) -> None:
    try:
        os.listdir(directory)
    except FileNotFoundError:
        raise BundleError(f"bundle directory {directory} does not exist") from None
    except NotADirectoryError:
        raise BundleError(f"{directory} is not a directory") from None
    except OSError as exc:
        raise BundleError(f"cannot read {directory}: {exc.strerror or exc}") from None


def candidate_files(directory: Path, items: list[Item]) -> list[Path]:
    """Paths to read, sorted; an unreadable sub-directory is appended to `items` as a problem."""

    def unreadable_dir(exc: OSError) -> None:
        name = relative_name(Path(exc.filename), directory) + "/"
        items.append(Item(name, "dir", problem=f"cannot read directory: {exc.strerror or exc}"))

    found = []
    for root, dirs, files in os.walk(directory, onerror=unreadable_dir):
        here = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not (here == directory and d == PRIVATE_DIR))
        found += [here / f for f in files if not f.startswith(".") and f.endswith((CERT_SUFFIX, TOKEN_SUFFIX))]
    private = directory / PRIVATE_DIR
    with contextlib.suppress(OSError):
        found += [p for p in private.glob(PRIVATE_CA_GLOB) if p.is_file()]
    return sorted(found)


def relative_name(path: Path, directory: Path) -> str:
    try:
        return str(path.relative_to(directory))
    except ValueError:
        return str(path)


def read_item(path: Path, name: str) -> list[Item]:
    kind = "token" if path.suffix == TOKEN_SUFFIX else "cert"
    try:
        data = path.read_bytes()
    except OSError as exc:
        return [Item(name, kind, problem=f"cannot read: {exc.strerror or exc}")]
    return [token_item(name, data)] if kind == "token" else cert_items(name, data)


def cert_items(name: str, data: bytes) -> list[Item]:
    try:
        certs = load_certs(data, "file")
    except BundleError:
        return [Item(name, "cert", problem="not a readable PEM certificate")]
    if len(certs) == 1:
        return [cert_item(name, certs[0])]
    return [cert_item(f"{name}#{index}", cert) for index, cert in enumerate(certs, start=1)]


def cert_item(name: str, cert: x509.Certificate) -> Item:
    try:
        return parsed_cert_item(name, cert)
    except ValueError as exc:  # extensions and names are parsed lazily, and may be malformed
        return Item(name, "cert", problem=f"malformed certificate: {exc}")


def parsed_cert_item(name: str, cert: x509.Certificate) -> Item:
    return Item(
        name,
        "ca" if is_ca(cert) else "cert",
        subject=common_name(cert),
        not_after=cert.not_valid_after_utc,
        lifetime=cert.not_valid_after_utc - cert.not_valid_before_utc,
    )


def is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else cert.subject.rfc4514_string()


def token_item(name: str, data: bytes) -> Item:
    encoded = data.decode("ascii", errors="replace").strip()
    try:
        header, claims = decode_unverified(encoded)
    except BundleError as exc:
        return Item(name, "token", problem=str(exc))
    problem = token_problem(header, claims, encoded)
    if problem:
        return Item(name, "token", problem=problem)
    return Item(
        name,
        "token",
        subject=str(claims.get("sub", "")),
        not_after=timestamp(claims["exp"]),
        lifetime=token_lifetime(claims),
        kid=header.get("kid") if isinstance(header.get("kid"), str) else None,
        algorithm=header.get("alg"),
        permissions=permissions_of(claims),
        encoded=encoded,
    )


def permissions_of(claims: dict) -> tuple[str, ...]:
    permissions = claims.get("permissions")
    if permissions is None:
        return ()
    return tuple(str(p) for p in permissions) if isinstance(permissions, list) else (str(permissions),)


def token_problem(header: dict, claims: dict, encoded: str) -> str | None:
    if not is_number(claims.get("exp")):
        return "token has no numeric exp claim"
    try:
        timestamp(claims["exp"])
    except (OverflowError, OSError, ValueError):
        return "token exp claim is out of range"
    if not signature_complete(header.get("alg"), encoded):
        return "token signature is truncated"
    return None


def signature_complete(algorithm: object, encoded: str) -> bool:
    """A token cut short inside its signature still decodes; its signature length gives it away."""
    signature = encoded.rsplit(".", 1)[-1]
    try:
        size = len(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    except ValueError:
        return False
    if algorithm == "RS256":
        return size >= MIN_RSA_SIGNATURE_BYTES
    return size == SIGNATURE_BYTES.get(algorithm, size)


def token_lifetime(claims: dict) -> timedelta | None:
    start = claims.get("iat", claims.get("nbf"))
    if not is_number(start):
        return None
    try:
        return timedelta(seconds=claims["exp"] - start)
    except (OverflowError, ValueError):
        return None


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def timestamp(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


# --- the JWKS the server fetches -------------------------------------------------------------


def fetch_jwks(url: str, ca_file: Path, timeout: timedelta) -> Jwks:
    """The published keys, or a Jwks with `error` set; never raises for network or content errors."""
    try:
        return Jwks(url, keys_by_kid(json.loads(download(url, ca_file, timeout))))
    except (OSError, ValueError, ssl.SSLError) as exc:
        return Jwks(url, error=describe_fetch_error(exc))
    except BundleError as exc:
        return Jwks(url, error=str(exc))


def download(url: str, ca_file: Path, timeout: timedelta) -> bytes:
    scheme = url.split("://", 1)[0].lower()
    if scheme not in ("http", "https"):
        raise BundleError(f"unsupported JWKS URL {url!r} (http:// or https:// only)")
    context = None
    if scheme == "https":
        if not ca_file.is_file():
            raise BundleError(f"CA file {ca_file} not found (use --ca-file)")
        context = ssl.create_default_context(cafile=str(ca_file))
    with urllib.request.urlopen(url, timeout=timeout.total_seconds(), context=context) as response:
        body = response.read(MAX_JWKS_BYTES + 1)
    if len(body) > MAX_JWKS_BYTES:
        raise BundleError(f"the JWKS URL returned more than {MAX_JWKS_BYTES} bytes")
    return body


def keys_by_kid(document: object) -> dict:
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise BundleError("the JWKS URL did not return a JWKS document")
    return {k["kid"]: k for k in document["keys"] if isinstance(k, dict) and isinstance(k.get("kid"), str)}


def describe_fetch_error(exc: Exception) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return f"cannot fetch: {exc.reason}"
    if isinstance(exc, json.JSONDecodeError):
        return "the JWKS URL did not return JSON"
    return f"cannot fetch: {exc}"


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
