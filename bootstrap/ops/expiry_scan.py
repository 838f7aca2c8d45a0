"""check-expiry's reading: every certificate and token under a bundle directory, as Items.

Private keys are never opened: of private/, only the CA certificates are read. An unreadable file
never raises; it becomes an item with a problem.
"""

from __future__ import annotations

import base64
import contextlib
import os
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from ..core.pki import load_certs
from ..core.tokens import decode_unverified
from ..errors import BundleError

CERT_SUFFIX, TOKEN_SUFFIX = ".pem", ".jwt"
# Only the CA certificates (one per trust domain, plus a rotation's next CAs) are read from
# private/; the keys there are never opened.
PRIVATE_DIR, PRIVATE_CA_GLOB = "private", "ca*.pem"
SIGNATURE_BYTES = {"ES256": 64}
MIN_RSA_SIGNATURE_BYTES = 256


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
