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
    kubernetes  a pod of the export's verify Job: it checks exactly the listeners routed to it
                (Route: a Service name and port each, and whether the export's NetworkPolicies
                let the Job's pod reach it: `policy_admits`); export-helm writes the routes
Listeners a vantage point says nothing about are reported as "not checked from here".
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import BundleError
from .config import SYSTEM_NAMESPACE, BundleConfig
from .security_model import LISTENERS, Listener, tls_admits

REACHES = ("published", "edge", "backend", "monitoring", "container")


@dataclass(frozen=True)
class Vantage:
    name: str
    reachable: tuple[str, ...]
    unreachable: tuple[str, ...]
    loopback: bool = False  # every listener is at 127.0.0.1 (the temporal container's own network)
    routed: bool = False  # reachability per listener from its Route, not from its reach


VANTAGES = {
    v.name: v
    for v in (
        Vantage("edge", ("published", "edge"), ("backend", "monitoring", "container")),
        Vantage("backend", ("backend",), ("container",)),
        Vantage("monitoring", ("monitoring",), ("container",)),
        Vantage("container", ("container",), (), loopback=True),
        Vantage("host", REACHES, ()),
        Vantage("kubernetes", (), (), routed=True),
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

# Outcome words shared with the prober (bootstrap.ops.verify_probe): a probe's result starts with one.
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
        return tls_admits(admits, self.domain, self.usage, self.expired)


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
class Route:
    """Where one listener is from this vantage point, and whether it must be reachable there."""
    host: str
    port: int | None = None  # None: the listener's own port
    reachable: bool = True


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


def route_of(listener: Listener, config: BundleConfig, vantage: Vantage, host: str | None,
             routes: dict[str, Route]) -> Route | Skipped:
    """Where to probe the listener from this vantage point and whether it must answer there; a
    route named for it overrides the host (and port), and alone decides on a routed vantage."""
    named = routes.get(listener.name)
    if vantage.routed:
        return named or Skipped(listener.name, "not run there: no --listener-host/--listener-blocked for it")
    if listener.reach not in vantage.reachable + vantage.unreachable:
        return Skipped(listener.name, f"reach {listener.reach}: not checked from {vantage.name}")
    reachable = listener.reach in vantage.reachable
    if named:
        return Route(named.host, named.port, reachable)
    return Route(host_of(listener, config, vantage, host), None, reachable)


def plan(config: BundleConfig, listeners: list[Listener], credentials: list[Credential], vantage: Vantage,
         server_names: dict[str, str], roots: dict[str, str], host: str | None = None,
         routes: dict[str, Route] | None = None) -> tuple[list[Pair], list[Skipped]]:
    """Every pair this vantage point can judge; the other listeners as Skipped."""
    pairs, skipped = [], []
    for listener in listeners:
        route = route_of(listener, config, vantage, host, routes or {})
        if isinstance(route, Skipped):
            skipped.append(route)
            continue
        reachable = route.reachable
        ca, server_name = server_identity(listener, config, server_names, roots)
        probe = Probe(route.host, route.port or port_of(listener, config), probe_mode(listener),
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


# Without the signing key (the Kubernetes Job) a role's own token stands in for the freshly minted
# one: these attacks need the key itself and are reported as not checked there.
SIGNING_KEY_ATTACKS = ("expired", "no kid", "wrong audience")


def token_expectation(attack: str) -> str:
    return ACCEPTED if attack == "valid" else DENIED


def role_namespace(config: BundleConfig, role: str) -> str | None:
    """A registered namespace the role holds a permission on, for its token's "valid" call."""
    known = {ns.name for ns in config.namespaces}
    permissions = next(r.permissions for r in config.roles if r.name == role)
    return next((p.split(":", 1)[0] for p in permissions if p.split(":", 1)[0] in known), None)


def least_role(config: BundleConfig) -> str | None:
    """The role a verify Job presents: the first that holds no system permission and reads a
    registered namespace (its token is then worth the least to whoever reads the Job's mounts)."""
    return next((r.name for r in config.roles if not any(p.startswith(f"{SYSTEM_NAMESPACE}:") for p in r.permissions)
                 and role_namespace(config, r.name)), None)


def parse_route(text: str, reachable: bool) -> tuple[str, Route]:
    """`NAME=HOST` or `NAME=HOST:PORT` (NAME a listener of security_model.LISTENERS)."""
    name, sep, where = text.partition("=")
    if not sep or name not in {l.name for l in LISTENERS}:
        raise BundleError(f"route {text!r}: expected LISTENER=HOST[:PORT] with a listener of the security model")
    host, colon, port = where.rpartition(":")
    if not colon:
        host, port = where, ""
    if not host or (colon and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536)):
        raise BundleError(f"route {text!r}: expected LISTENER=HOST[:PORT] with a port 1-65535")
    return name, Route(host, int(port) if port else None, reachable)


# --------------------------------------------------------------------------- Kubernetes NetworkPolicy

NAMESPACE_LABEL = "kubernetes.io/metadata.name"


def labels_match(selector: dict, labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels; matchExpressions In/NotIn/Exists/DoesNotExist)."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        ok = {"In": labels.get(key) in values, "NotIn": labels.get(key) not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}.get(operator)
        if ok is None:
            raise BundleError(f"NetworkPolicy: selector operator {operator!r} is not understood")
        if not ok:
            return False
    return True


def _peer_admits(peer: dict, source: dict[str, str], namespace: str) -> bool:
    """A `from` peer, for a source pod in the policy's own namespace: a namespaceSelector sees only
    the label Kubernetes sets on every namespace (kubernetes.io/metadata.name)."""
    if not peer or set(peer) - {"podSelector", "namespaceSelector"}:  # ipBlock: pod IPs are not known here
        raise BundleError(f"NetworkPolicy: peer {sorted(peer)} is not understood (podSelector, namespaceSelector)")
    if "namespaceSelector" in peer and not labels_match(peer["namespaceSelector"], {NAMESPACE_LABEL: namespace}):
        return False
    return labels_match(peer.get("podSelector") or {}, source)


def _port_matches(entry: dict, port: int) -> bool:
    if isinstance(entry.get("port"), str):  # a named port: the pod's spec would be needed
        raise BundleError(f"NetworkPolicy: named port {entry['port']!r} is not understood (use a number)")
    if entry.get("protocol", "TCP") != "TCP":
        return False
    low = entry.get("port")
    return low is None or low <= port <= entry.get("endPort", low)


def _rule_admits(rule: dict, port: int, source: dict[str, str], namespace: str) -> bool:
    ports = rule.get("ports")
    if ports and not any(_port_matches(p, port) for p in ports):
        return False
    peers = rule.get("from")
    return not peers or any(_peer_admits(peer, source, namespace) for peer in peers)


def policy_admits(policies: list[dict], target: dict[str, str], port: int, source: dict[str, str]) -> bool:
    """Whether a pod labelled `source` may open TCP `port` on a pod labelled `target` (both in the
    policies' namespace), as Kubernetes NetworkPolicy (networking.k8s.io/v1) decides ingress: a pod
    no Ingress policy selects takes everything; a selected one only what some rule allows."""
    selecting = [(p, p["spec"]) for p in policies if p.get("kind") == "NetworkPolicy"
                 and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
                 and labels_match(p["spec"]["podSelector"], target)]
    if not selecting:
        return True
    return any(_rule_admits(rule, port, source, policy["metadata"].get("namespace", ""))
               for policy, spec in selecting for rule in spec.get("ingress") or [])
