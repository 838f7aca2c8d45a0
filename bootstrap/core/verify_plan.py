"""What `temporal-bundle verify` expects: every listener x every credential, from one vantage point.

Pure: the expectations come from security_model.LISTENERS alone (the README's table), so verify,
the table and the tests cannot disagree. Nothing here opens a socket or reads a file.

A vantage point is the network verify probes from, and decides which listeners it must reach:
    edge        the applications' network (an attacker's seat): published and edge listeners
                reachable, backend / monitoring / container-only ones NOT reachable
    backend     the JWKS and PostgreSQL's network: backend listeners reachable, container-only not
    monitoring  Prometheus's network: monitoring listeners reachable, container-only not
    container   the temporal container's own loopback: the container-only listeners reachable
    host        everything on one host (--host ADDR): every listener reachable (tests, one VM)
Listeners a vantage point says nothing about are reported as "not checked from here".
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import BundleConfig
from .security_model import LISTENERS, Listener

REACHES = ("published", "edge", "backend", "monitoring", "container")


@dataclass(frozen=True)
class Vantage:
    name: str
    reachable: tuple[str, ...]
    unreachable: tuple[str, ...]
    loopback: bool = False  # every listener is at 127.0.0.1 (the temporal container's own network)


VANTAGES = {
    v.name: v
    for v in (
        Vantage("edge", ("published", "edge"), ("backend", "monitoring", "container")),
        Vantage("backend", ("backend",), ("container",)),
        Vantage("monitoring", ("monitoring",), ("container",)),
        Vantage("container", ("container",), (), loopback=True),
        Vantage("host", REACHES, ()),
    )
}

# The server certificate each service presents (bundle directory, leaf name): its common name is
# the TLS server name verify checks it against. A service whose leaf the bundle does not issue
# (Dex without oidc, PostgreSQL on SQLite, ...) is not deployed.
SERVER_LEAF = {
    "temporal": ("server", "frontend"),
    "jwks": ("jwks", "server"),
    "codec-server": ("codec", "server"),
    "temporal-ui": ("ui", "server"),
    "ui-gate": ("ui-gate", "server"),
    "dex": ("dex", "server"),
    "grafana": ("grafana", "server"),
    "token-exchange": ("exchange", "server"),
    "postgresql": ("postgres", "server"),
}

# Outcome words shared with the prober (bootstrap.ops.verify): a probe's result starts with one.
ADMITTED, REFUSED, UNREACHABLE, PLAINTEXT = "admitted", "refused", "unreachable", "plaintext-http"
ACCEPTED, DENIED = "accepted", "denied"


@dataclass(frozen=True)
class Credential:
    name: str
    domain: str  # a trust domain ("server", "client", "internode", "database"), "foreign" or "none"
    usage: str  # "server", "client", "both", or "" (none)
    expired: bool = False
    cert: str | None = None  # file paths, for the TLS client
    key: str | None = None

    def passes(self, admits: str) -> bool:
        """What a listener that admits `admits` must do with this credential at the TLS layer."""
        if admits in ("any", "plaintext"):
            return True
        return self.domain == admits and self.usage in ("client", "both") and not self.expired


@dataclass(frozen=True)
class Probe:
    host: str
    port: int
    mode: str  # grpc | https | membership | postgres | plaintext
    server_name: str
    roots: str  # the CA file the server's certificate is verified with
    db_user: str = ""


@dataclass(frozen=True)
class Pair:
    listener: str
    credential: Credential
    expected: str
    probe: Probe


@dataclass(frozen=True)
class Skipped:
    listener: str
    reason: str


def expected(listener: Listener, credential: Credential, reachable: bool) -> str:
    if not reachable:
        return UNREACHABLE
    if listener.admits == "plaintext":
        return PLAINTEXT
    return ADMITTED if credential.passes(listener.admits) else REFUSED


def verdict(outcome: str) -> str:
    """The word an outcome starts with ("refused: EOF" -> "refused")."""
    return outcome.split(":", 1)[0]


def probe_mode(listener: Listener) -> str:
    if listener.admits == "plaintext":
        return "plaintext"
    if listener.service == "postgresql":
        return "postgres"
    if "membership" in listener.name:
        return "membership"
    if listener.service in ("temporal", "ui-gate") and "HTTP" not in listener.name:
        return "grpc"  # frontend, internal-frontend, history, matching, worker, the UI gate
    return "https"  # frontend HTTP API, JWKS, codec server, UI, Dex, Grafana, token exchange


def deployed(config: BundleConfig, issued: set[tuple[str, str]], services: set[str] | None) -> tuple[list[Listener], list[Skipped]]:
    """The listeners this deployment runs: their service's server certificate is issued (or they
    speak plaintext) and, when `services` names the running services, their service runs."""
    keep, skipped = [], []
    for listener in LISTENERS:
        if services is not None and listener.service not in services:
            skipped.append(Skipped(listener.name, f"service {listener.service} not running"))
        elif services is None and listener.profile:
            skipped.append(Skipped(listener.name, f"compose profile {listener.profile}: name its service in --services"))
        elif listener.admits != "plaintext" and SERVER_LEAF.get(listener.service) not in issued:
            skipped.append(Skipped(listener.name, f"service {listener.service} not deployed by this bundle"))
        else:
            keep.append(listener)
    return keep, skipped


def port_of(listener: Listener, config: BundleConfig) -> int:
    if listener.service == "postgresql":
        return config.persistence.port
    return listener.port_number(config.network, config.oidc)


def host_of(listener: Listener, config: BundleConfig, vantage: Vantage, host: str | None) -> str:
    if host:
        return host
    if vantage.loopback:
        return "127.0.0.1"
    if listener.name == "metrics" and config.network.metrics_host and "monitoring" in vantage.reachable:
        # Bound to the monitoring network's address alone; from elsewhere the service's name is
        # tried, to show the port is not bound on that network's address.
        return config.network.metrics_host
    return listener.service  # the compose service name


def server_identity(listener: Listener, config: BundleConfig, server_names: dict[str, str], roots: dict[str, str]) -> tuple[str, str]:
    """(CA file, server name) the listener's certificate is verified with: internode listeners
    present the internode certificate, every other one its service's server certificate."""
    if listener.admits == "internode":
        return roots["internode"], config.network.internode_server_name
    return roots["server"], server_names.get(listener.service, listener.service)


def plan(config: BundleConfig, listeners: list[Listener], credentials: list[Credential], vantage: Vantage,
         server_names: dict[str, str], roots: dict[str, str], host: str | None = None) -> tuple[list[Pair], list[Skipped]]:
    """Every pair this vantage point can judge; the other listeners as Skipped."""
    pairs, skipped = [], []
    for listener in listeners:
        if listener.reach not in vantage.reachable + vantage.unreachable:
            skipped.append(Skipped(listener.name, f"reach {listener.reach}: not checked from {vantage.name}"))
            continue
        reachable = listener.reach in vantage.reachable
        ca, server_name = server_identity(listener, config, server_names, roots)
        probe = Probe(host_of(listener, config, vantage, host), port_of(listener, config), probe_mode(listener),
                      server_name, ca, config.persistence.user)
        pairs += [Pair(listener.name, c, expected(listener, c, reachable), probe) for c in credentials]
    return pairs, skipped


def unprovable(pairs: list[Pair]) -> list[str]:
    """Reachable listeners that admit one trust domain but were offered no certificate they must
    admit, or none they must refuse: a matrix like that proves nothing about them."""
    by_domain = {l.name for l in LISTENERS if l.admits not in ("any", "plaintext")}
    outcomes: dict[str, set[str]] = {}
    for pair in pairs:
        if pair.listener in by_domain and pair.expected in (ADMITTED, REFUSED):
            outcomes.setdefault(pair.listener, set()).add(pair.expected)
    return [name for name, seen in outcomes.items() if seen != {ADMITTED, REFUSED}]


# Token attacks on the frontend (a client-domain certificate every time, so only the token decides).
# name -> what it is; each must be denied (PermissionDenied / Unauthenticated), "valid" accepted.
TOKEN_ATTACKS = {
    "valid": "a fresh token from the active signing key, <namespace>:read",
    "no token": "the certificate alone",
    "expired": "signed by the active key, expired 50 minutes ago",
    "unknown kid": "signed by a key the JWKS does not publish",
    "forged signature": "the active kid over a key of the attacker's own",
    "no kid": "signed by the active key, no kid header",
    "alg none": "unsigned, alg none, the active kid",
    "tampered": "a valid read token whose payload now says temporal-system:admin",
    "wrong audience": "signed by the active key, for another audience",
    "wrong namespace": "signed by the active key, admin of another namespace only",
}


def token_expectation(attack: str) -> str:
    return ACCEPTED if attack == "valid" else DENIED
