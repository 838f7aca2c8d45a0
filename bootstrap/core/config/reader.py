"""Reading bundle.yaml: a strict section reader, and the checks every section shares (hosts, https
URLs, browser origins, absolute paths, permissions, name patterns)."""

from __future__ import annotations

import functools
import ipaddress
import re
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import timedelta
from typing import Any, Iterator, NamedTuple

from ..durations import parse_duration
from ..permissions import NAMESPACE_ROLES, split_permission
from ...errors import BundleError

# Temporal accepts almost anything, but ':' would break the "<ns>:<role>" claim format and names
# that are not DNS-ish break CLI quoting and metrics labels, so we hold the line here.
NAMESPACE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
ROLE_NAME = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
DNS_NAME = re.compile(r"^(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
# A Kubernetes object name or namespace (RFC 1123 label).
K8S_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
IMAGE_REF = re.compile(r"^[a-z0-9][a-z0-9._/:-]*(:[A-Za-z0-9_.-]+)?(@sha256:[0-9a-f]{64})?$")
# The host of an https URL or an origin: a bracketed IPv6 address, or anything check_host judges.
BRACKETED_IPV6 = r"\[[0-9a-fA-F:]+\]"
HTTPS_URL = re.compile(r"^https://(" + BRACKETED_IPV6 + r"|[^/:@?#\[\]]+)(:[0-9]{1,5})?(/[^?#\s]*)?$")
ORIGIN = re.compile(r"^(https?)://(" + BRACKETED_IPV6 + r"|[^/:@?#\[\]]+)(?::([0-9]{1,5}))?$")


class KeyRead(NamedTuple):
    """One key a Section method read: the mapping, the key, the method's name and its other arguments."""
    data: dict
    key: Any
    how: str
    args: tuple


# Set only while config_schema derives bundle.schema.json from what the parser reads.
_READS: ContextVar[list[KeyRead] | None] = ContextVar("section_reads", default=None)


@contextmanager
def recording_reads() -> Iterator[list[KeyRead]]:
    """Every key read while inside, outermost method first (string() before the get() it calls)."""
    reads: list[KeyRead] = []
    token = _READS.set(reads)
    try:
        yield reads
    finally:
        _READS.reset(token)


def _recorded(method):
    @functools.wraps(method)
    def read(self, key, *args, **kwargs):
        reads = _READS.get()
        if reads is not None:
            reads.append(KeyRead(self.data, key, method.__name__, args + tuple(kwargs.items())))
        return method(self, key, *args, **kwargs)
    return read


class Section:
    """A mapping read key by key; `done()` rejects whatever was not read (unknown keys)."""

    def __init__(self, data: Any, where: str):
        if not isinstance(data, dict):
            raise BundleError(f"{where}: expected a mapping, got {type(data).__name__}")
        self.data, self.where, self.seen = data, where, set()

    @_recorded
    def get(self, key: str, default: Any) -> Any:
        self.seen.add(key)
        value = self.data.get(key, default)
        return default if value is None else value

    @_recorded
    def section(self, key: str) -> Section:
        return Section(self.get(key, {}), f"{self.where}: {key}")

    @_recorded
    def list(self, key: str) -> list:
        value = self.get(key, [])
        if not isinstance(value, list):
            raise BundleError(f"{self.where}: {key} must be a list")
        return value

    @_recorded
    def string(self, key: str, default: str) -> str:
        value = self.get(key, default)
        if not isinstance(value, str):
            raise BundleError(f"{self.where}: {key} must be a string, got {value!r}")
        return value

    @_recorded
    def boolean(self, key: str, default: bool) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            raise BundleError(f"{self.where}: {key} must be true or false")
        return value

    @_recorded
    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.string(key, default)
        if value not in choices:
            raise BundleError(f"{self.where}: {key} must be one of {', '.join(choices)}; got {value!r}")
        return value

    @_recorded
    def duration(self, key: str, default: timedelta) -> timedelta:
        self.seen.add(key)
        if self.data.get(key) is None:
            return default
        return parse_duration(self.data[key], f"{self.where}: {key}")

    @_recorded
    def port(self, key: str, default: int) -> int:
        value = self.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
            raise BundleError(f"{self.where}: {key} must be a port number 1-65535, got {value!r}")
        return value

    @_recorded
    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value = self.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise BundleError(f"{self.where}: {key} must be an integer {low}..{high}, got {value!r}")
        return value

    @_recorded
    def names(self, key: str) -> tuple[str, ...]:
        values = self.list(key)
        for value in values:
            check_host(value, f"{self.where}: {key}")
        return tuple(values)

    @_recorded
    def host(self, key: str, default: str) -> str:
        value = self.string(key, default)
        check_host(value, f"{self.where}: {key}")
        return value

    @_recorded
    def optional_host(self, key: str) -> str:
        """A host name, or "" when the key is absent or null."""
        self.seen.add(key)
        return "" if self.data.get(key) is None else self.host(key, "")

    @_recorded
    def https_url(self, key: str, *, required: bool, ipv6_hosts: bool = True) -> str:
        """An https URL without query or fragment ("" when absent and not required)."""
        value = self.string(key, "")
        if not value:
            if required:
                raise BundleError(f"{self.where}: {key} is required (an https URL)")
            return ""
        match = HTTPS_URL.match(value)
        if not match or (not ipv6_hosts and match.group(1).startswith("[")):
            raise BundleError(f"{self.where}: {key} must be an https URL without query or fragment, got {value!r}")
        check_host(match.group(1).strip("[]"), f"{self.where}: {key}")
        return value

    @_recorded
    def file_path(self, key: str, *, required: bool) -> str:
        """The absolute path of a file the bootstrap reads ("" when absent and not required)."""
        value = self.string(key, "")
        if not value and not required:
            return ""
        if not value.startswith("/"):
            raise BundleError(f"{self.where}: {key} must be the absolute path of a file the bootstrap can read, got {value!r}")
        return value

    def done(self) -> None:
        unknown = sorted(str(k) for k in self.data if k not in self.seen)
        if unknown:
            raise BundleError(f"{self.where}: unknown key {unknown[0]!r}")


def check_host(value: Any, where: str) -> None:
    if not isinstance(value, str):
        raise BundleError(f"{where}: expected a host name or IP address, got {value!r}")
    try:
        ipaddress.ip_address(value)
        return
    except ValueError:
        pass
    if not DNS_NAME.match(value) or len(value) > 253:
        raise BundleError(f"{where}: {value!r} is not a valid DNS name or IP address")


def check_origin(value: Any, where: str) -> str:
    """A browser origin exactly as the Origin header carries it: scheme://host[:port], nothing else.
    https, or http for a loopback UI only (the browser then still talks https to the codec server)."""
    if not isinstance(value, str) or value != value.strip() or value.endswith("/"):
        raise BundleError(f"{where}: {value!r} is not an origin like https://temporal-ui.example.com")
    match = ORIGIN.match(value)
    if not match:
        raise BundleError(f"{where}: {value!r} is not an origin like https://temporal-ui.example.com")
    scheme, host, port = match.groups()
    if "*" in host:
        raise BundleError(f"{where}: {value!r}: wildcards are not allowed; list each origin")
    check_host(host.strip("[]"), where)
    if port is not None and not 1 <= int(port) <= 65535:
        raise BundleError(f"{where}: {value!r}: port must be 1-65535")
    if port is not None and int(port) == {"http": 80, "https": 443}[scheme]:
        raise BundleError(f"{where}: {value!r}: drop the default port, browsers omit it from Origin")
    if value != value.lower():
        raise BundleError(f"{where}: {value!r}: write origins in lower case, as browsers send them")
    if scheme == "http" and host not in ("localhost", "127.0.0.1", "[::1]"):
        raise BundleError(f"{where}: {value!r}: only a loopback UI may use http; use https")
    return value


def check_permission(permission: Any, known: set[str], where: str) -> str:
    parts = split_permission(permission)
    if parts is None:
        raise BundleError(f"{where}: permission {permission!r} is not '<namespace>:<role>'")
    namespace, role = parts
    if role not in NAMESPACE_ROLES:
        raise BundleError(f"{where}: permission {permission!r}: role must be one of {', '.join(NAMESPACE_ROLES)}")
    if namespace == "system":
        raise BundleError(f"{where}: permission {permission!r}: the cluster scope is 'temporal-system', not 'system'")
    if namespace not in known:
        raise BundleError(f"{where}: permission {permission!r} names namespace {namespace!r}, which is not configured")
    return permission
