"""The one module that writes files: atomic writes with explicit modes, a directory lock, and the
bundle directory layout (one sub-directory per consumer, so each container mounts only what it
needs)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from .errors import BundleError

CERT_MODE = 0o644
KEY_MODE = 0o600
CA_KEY_MODE = 0o400
PUBLIC_DIR_MODE = 0o755
PRIVATE_DIR_MODE = 0o700


@dataclass(frozen=True)
class Layout:
    root: Path
    # Top-level directory -> (uid, gid) of the container that reads it, e.g. {"postgres": (999, 999)}.
    # Lets each service run as its own non-root user and still read its 0600 key.
    owners: tuple[tuple[str, tuple[int, int]], ...] = ()

    def owner_of(self, path: Path) -> tuple[int, int] | None:
        try:
            top = path.relative_to(self.root).parts[0]
        except (ValueError, IndexError):
            return None
        return dict(self.owners).get(top)

    # private/: CA key and JWT signing keys. Only the bootstrap ever mounts it.
    @property
    def private(self) -> Path:
        return self.root / "private"

    @property
    def ca_cert(self) -> Path:
        return self.private / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.private / "ca.key"

    @property
    def signing_keys(self) -> Path:
        return self.private / "jwt"

    @property
    def active_kid(self) -> Path:
        return self.signing_keys / "active"

    def signing_key(self, kid: str) -> Path:
        return self.signing_keys / f"{kid}.key"

    @property
    def cluster_record(self) -> Path:
        """Facts fixed when the database was created (the history shard count)."""
        return self.private / "cluster.json"

    @property
    def rotation_state(self) -> Path:
        return self.private / "rotation.json"

    # trust/: ca.pem bundles every CA currently trusted (two during a CA rollover), for clients.
    # The server gets one CA per file instead (current.pem, next.pem): its hot reload notices a
    # change only in the FIRST certificate of each listed file, so a CA appended to a bundle
    # would go unseen until something else changed.
    @property
    def trust_bundle(self) -> Path:
        return self.root / "trust" / "ca.pem"

    @property
    def trust_current(self) -> Path:
        return self.root / "trust" / "current.pem"

    @property
    def trust_next(self) -> Path:
        return self.root / "trust" / "next.pem"

    # Trust domains: each has its own CA, so a certificate from one domain never passes a listener
    # of another. The server domain keeps the names bundles had before domains existed
    # (private/ca.*, trust/ca.pem), so applications keep the root they already verify with.
    def domain_ca(self, domain: str) -> tuple[Path, Path]:
        if domain == "server":
            return self.ca_cert, self.ca_key
        return self.private / f"ca-{domain}.pem", self.private / f"ca-{domain}.key"

    def next_ca(self, domain: str) -> tuple[Path, Path]:
        """Where a rotation keeps the domain's next CA until it starts issuing."""
        suffix = "" if domain == "server" else f"-{domain}"
        return self.private / f"ca{suffix}-next.pem", self.private / f"ca{suffix}-next.key"

    def trust_files(self, domain: str) -> tuple[Path, Path, Path]:
        """(bundle of every trusted CA, current CA, next CA): the bundle for OpenSSL-style readers
        (PostgreSQL, clients), one CA per file for Temporal's hot reload."""
        base = self.root / "trust" if domain == "server" else self.root / "trust" / domain
        return base / "ca.pem", base / "current.pem", base / "next.pem"

    @property
    def jwks(self) -> Path:
        return self.root / "jwks" / "jwks.json"

    # codec-keys/: the payload data keys, for workers, clients and the codec server. Its own
    # directory, so an application mounting it gets no TLS key (codec/ holds the codec server's).
    @property
    def codec_keys(self) -> Path:
        return self.root / "codec-keys" / "keys.json"

    # exchange/: the token exchange's TLS pair and its signing key, a key used for nothing else
    # (its kid is published in jwks.json next to the bundle's). Only the exchange mounts it.
    @property
    def exchange_signing_key(self) -> Path:
        return self.root / "exchange" / "signing.key"

    # The exchange keys published but not signing: the next one (rotate --kind exchange-key,
    # phase published) or the retiring one (phase activated). In private/: the exchange never
    # needs them, only the JWKS does.
    @property
    def exchange_keys(self) -> Path:
        return self.private / "exchange-keys"

    def exchange_key(self, kid: str) -> Path:
        return self.exchange_keys / f"{kid}.key"

    # codec-kek/: the key that wraps the data keys (file backend). Apart from codec-keys/, so a
    # copy of the wrapped keys alone (a volume, an export) opens nothing.
    @property
    def codec_kek(self) -> Path:
        return self.root / "codec-kek" / "kek.key"

    def leaf(self, directory: str, name: str) -> tuple[Path, Path]:
        base = self.root / directory
        return base / f"{name}.pem", base / f"{name}.key"

    def token(self, role: str) -> Path:
        return self.root / "tokens" / f"{role}.jwt"

    # registrar/: the system role's own cert, key and token for the namespace-registration job,
    # so that job mounts no other role's key or token.
    @property
    def registrar_token(self) -> Path:
        return self.root / "registrar" / "system.jwt"

    @property
    def config_dir(self) -> Path:
        return self.root / "config"

    @property
    def lock_file(self) -> Path:
        return self.root / ".bundle.lock"

    def relative(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)


def read_optional(path: Path) -> bytes | None:
    """The file's bytes, None if it does not exist; unreadable files are an error, not 'missing'."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc.strerror or exc}") from None


def read_secret(path: str | Path, where: str) -> str:
    """A secret kept in a file of its own (a PIN, a connector's client secret): its text, stripped.
    Unreadable or empty is an error naming `where` (the bundle.yaml setting that points at it)."""
    try:
        value = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise BundleError(f"{where}: cannot read {path}: {exc.strerror or exc}") from None
    if not value:
        raise BundleError(f"{where}: {path} is empty")
    return value


def check_plain_path(root: Path, path: Path) -> None:
    """Refuse a write that would go through a symbolic link: under root every component of path
    must be a real directory and the file itself a regular file (or not exist yet). Checked (with
    lstat, following nothing) while planning, so a refused run writes nothing."""
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        raise BundleError(f"{path} is not under {root}") from None
    current = root
    for depth, part in enumerate(parts, start=1):
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            return
        except OSError as exc:
            raise BundleError(f"cannot use {current}: {exc.strerror or exc}") from None
        leaf = depth == len(parts)
        if stat.S_ISLNK(mode):
            raise BundleError(f"{current} is a symbolic link: refusing to write {path} through it")
        if not (stat.S_ISREG(mode) if leaf else stat.S_ISDIR(mode)):
            kind = "regular file" if leaf else "directory"
            raise BundleError(f"{current} is not a {kind}: refusing to write {path}")


def _ensure_dir(directory: Path, root: Path) -> None:
    if directory.is_dir():
        return
    parent = directory.parent
    if parent != directory and not parent.is_dir():
        _ensure_dir(parent, root)
    private = directory == root / "private" or root / "private" in directory.parents
    mode = PRIVATE_DIR_MODE if private else PUBLIC_DIR_MODE
    directory.mkdir(mode=mode, exist_ok=True)
    os.chmod(directory, mode)  # mkdir's mode is narrowed by the umask; 077 would hide certs from consumers


def write_atomic(path: Path, data: bytes, mode: int, root: Path | None = None, owner: tuple[int, int] | None = None) -> None:
    """temp file in the same directory + fsync + rename + fsync(dir): readers see old or new."""
    _ensure_dir(path.parent, root or path.parent)
    if owner is not None:
        os.chown(path.parent, *owner)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        os.fchmod(fd, mode)  # the umask must not widen or narrow what we asked for
        os.write(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_file(path: Path, mode: int, owner: tuple[int, int] | None = None):
    """write_atomic for data too large to hold: yields a binary file in path's directory; on a
    clean exit it is fsynced and renamed over path, on an exception it is removed (nothing written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb", closefd=False) as out:
            yield out
        os.fsync(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)
    _fsync_dir(path.parent)


def remove(path: Path) -> None:
    path.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def locked(layout: Layout):
    """Serialise bootstrap runs on one directory, so two never interleave a key and its cert.

    A run that fails takes back what the lock itself added (the lock file, directories it had to
    create, if still empty): bad input changes nothing on disk."""
    new_dirs = _missing_dirs(layout.root)
    fd, created_lock = _acquire_lock(layout)
    try:
        yield
    except BaseException:
        if created_lock:
            _undo_lock(layout, new_dirs)
        raise
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _missing_dirs(directory: Path) -> list[Path]:
    """The directories that do not exist yet on the way to `directory`, innermost first."""
    missing = []
    while not directory.exists() and directory != directory.parent:
        missing.append(directory)
        directory = directory.parent
    return missing


def _acquire_lock(layout: Layout) -> tuple[int, bool]:
    """(fd holding the lock, whether this run created the lock file). A failed run may unlink the
    lock file while another run waits on it, so after flock the waiter checks that the path
    still names its file, and starts over if not."""
    while True:
        try:
            layout.root.mkdir(parents=True, exist_ok=True)
            fd, created = _open_lock_file(layout.lock_file)
        except OSError as exc:
            raise BundleError(f"cannot use output directory {layout.root}: {exc.strerror or exc}") from None
        fcntl.flock(fd, fcntl.LOCK_EX)
        if _same_file(fd, layout.lock_file):
            return fd, created
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _open_lock_file(path: Path) -> tuple[int, bool]:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600), True
    except FileExistsError:
        return os.open(path, os.O_RDWR), False


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = path.stat()
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def _undo_lock(layout: Layout, new_dirs: list[Path]) -> None:
    with contextlib.suppress(OSError):
        layout.lock_file.unlink()
    for directory in new_dirs:
        try:
            directory.rmdir()
        except OSError:
            return  # not empty: the run wrote something there, keep it


@dataclass(frozen=True)
class Write:
    path: Path
    data: bytes
    mode: int
    reason: str  # "created", "re-issued: SANs changed", ...


@dataclass(frozen=True)
class Skip:
    path: Path
    reason: str = "already exists, skipped"


@dataclass(frozen=True)
class Delete:
    path: Path
    reason: str


Action = Write | Skip | Delete


def parse_owners(specs: list[str]) -> tuple[tuple[str, tuple[int, int]], ...]:
    """["postgres=999:999", "server=1000"] -> (("postgres", (999, 999)), ("server", (1000, 1000)))."""
    owners = []
    for spec in specs:
        directory, _, ids = spec.partition("=")
        uid, _, gid = ids.partition(":")
        if not directory or "/" in directory or not uid.isdigit() or (gid and not gid.isdigit()):
            raise BundleError(f"invalid --owner {spec!r} (expected DIR=UID[:GID], e.g. postgres=999:999)")
        owners.append((directory, (int(uid), int(gid or uid))))
    return tuple(owners)


def apply(layout: Layout, actions: list[Action]) -> list[Action]:
    """Carry out a plan. Every decision was made (and every input validated) before this runs."""
    for action in actions:
        try:
            if isinstance(action, Write):
                write_atomic(action.path, action.data, action.mode, layout.root, layout.owner_of(action.path))
            elif isinstance(action, Delete):
                remove(action.path)
        except OSError as exc:  # a full or read-only disk: the file is as it was (temp + rename)
            raise BundleError(f"cannot write {layout.relative(action.path)}: {exc.strerror or exc}") from None
    return actions


def describe(layout: Layout, action: Action) -> str:
    verb = {Write: "wrote", Skip: "kept", Delete: "removed"}[type(action)]
    return f"{verb} {layout.relative(action.path)}: {action.reason}"
