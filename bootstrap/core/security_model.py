"""Who may connect to which listener: the one statement of the bundle's security model.

The README's "Security model" table is rendered from LISTENERS (a test keeps them equal), and the
attack-matrix tests take their expectations from the same entries, so the table cannot drift from
what the real server does.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import NetworkConfig, OIDCConfig


@dataclass(frozen=True)
class Listener:
    name: str
    port: str  # a NetworkConfig attribute, or a literal port for services outside the server
    # What TLS admits: a trust domain whose client certificates pass ("client", "internode",
    # "database"), "client-optional" (none, or a client-domain one), "any" (TLS without client
    # certificates), or "plaintext".
    admits: str
    token: str  # what a caller needs beyond the TLS layer
    # Where it is reachable in the compose stack: "published" (host loopback and the edge
    # network), "edge", "backend" (no application container joins it), "monitoring" (the
    # monitoring network: Temporal's metrics alias, the exporter, Prometheus; no application
    # container), "container" (loopback inside its own container only).
    reach: str
    service: str = "temporal"
    profile: str = ""  # a compose profile the service runs under only when enabled

    @property
    def reach_text(self) -> str:
        return REACH[self.reach] + (f" (compose profile {self.profile})" if self.profile else "")

    def port_number(self, net: NetworkConfig, oidc: OIDCConfig | None = None) -> int:
        if self.port.isdigit():
            return int(self.port)
        if self.port == "oidc.port":  # Dex listens on the issuer's port inside its container too
            return (oidc or OIDCConfig()).port
        if self.port.endswith("+membership"):
            return getattr(net, self.port.removesuffix("+membership")) + net.membership_port_offset
        return getattr(net, self.port)


TOKEN_NEEDED = "a role token for every call (health and GetSystemInfo excepted)"

LISTENERS = (
    Listener("frontend gRPC", "frontend_port", "client", TOKEN_NEEDED, "published"),
    Listener("frontend HTTP API", "frontend_http_port", "client", TOKEN_NEEDED, "edge"),
    Listener("frontend membership", "frontend_port+membership", "internode", "none (ringpop over internode TLS)", "edge"),
    Listener("internal-frontend", "internal_frontend_port", "internode", "NONE: every caller is system admin", "container"),
    Listener("internal-frontend membership", "internal_frontend_port+membership", "internode", "none", "container"),
    Listener("history", "history_port", "internode", "none", "container"),
    Listener("history membership", "history_port+membership", "internode", "none", "container"),
    Listener("matching", "matching_port", "internode", "none", "container"),
    Listener("matching membership", "matching_port+membership", "internode", "none", "container"),
    Listener("worker", "worker_port", "internode", "none", "container"),
    Listener("worker membership", "worker_port+membership", "internode", "none", "container"),
    Listener("metrics", "metrics_port", "plaintext", "none (read-only metrics)", "monitoring"),
    Listener("JWKS", "jwks_port", "any", "none (public keys)", "backend", service="jwks"),
    Listener("codec server", "8888", "client-optional", "a role token; plaintext only for codec.decrypt_role; a namespace's "
             "data keys (key service) only with a client cert and write there", "published",
             service="codec-server"),
    Listener("Web UI", "8080", "any", "an OIDC login (the frontend checks the user's token)", "published",
             service="temporal-ui"),
    Listener("UI gate (gRPC)", "7233", "client", "the caller's token, passed on to the frontend; answers "
             "GetClusterInfo and ListNamespaces itself only for a verified token naming namespaces", "edge",
             service="ui-gate"),
    Listener("Dex (OIDC issuer)", "oidc.port", "any", "a user's password (or an upstream SSO login)", "published",
             service="dex"),
    Listener("token exchange", "8444", "any", "a workload's identity token from a configured issuer; grants what "
             "workload_identity binds, for minutes", "published", service="token-exchange", profile="workload-identity"),
    Listener("PostgreSQL", "5432", "database", "certificate auth: CN = database user", "backend", service="postgresql"),
    # Profile `monitoring` only.
    Listener("Prometheus", "9090", "plaintext", "none (queries every metric; not published)", "monitoring",
             service="prometheus", profile="monitoring"),
    Listener("expiry exporter", "9464", "plaintext", "none (expiry dates, no certificate or token)", "monitoring",
             service="expiry-exporter", profile="monitoring"),
    Listener("Alertmanager", "9093", "plaintext", "none (reads and silences alerts; not published)", "monitoring",
             service="alertmanager", profile="monitoring"),
    Listener("Grafana", "3000", "any", "an OIDC login through Dex (Admin only for temporal-system:admin, else "
             "Viewer); queries Prometheus for logged-in users only", "published", service="grafana", profile="monitoring"),
)

ADMITS = {
    "client": "client-domain certs (roles, UI, health check)",
    "internode": "the internode cert only",
    "database": "the database client cert only",
    "any": "TLS, no client cert asked",
    "client-optional": "no client cert, or a client-domain one (asked, optional: the key service needs it)",
    "plaintext": "no TLS",
}


def tls_admits(admits: str, domain: str, usage: str, expired: bool) -> bool:
    """Whether a listener that admits `admits` completes the TLS handshake with a certificate of
    `domain` ("none": no certificate sent, "foreign": another CA's) for `usage`."""
    if admits in ("any", "plaintext") or (admits == "client-optional" and domain == "none"):
        return True
    wanted = "client" if admits == "client-optional" else admits
    return domain == wanted and usage in ("client", "both") and not expired


REACH = {
    "published": "host (127.0.0.1) and the edge network",
    "edge": "edge network (not published)",
    "backend": "backend network only (no application joins it)",
    "monitoring": "monitoring network only (Prometheus; no application joins it)",
    "container": "loopback inside its container only",
}


def markdown_table(net: NetworkConfig | None = None) -> str:
    net = net or NetworkConfig()
    rows = ["| listener | port | TLS admits | beyond TLS | reachable from |", "| --- | --- | --- | --- | --- |"]
    for item in LISTENERS:
        rows.append(
            f"| {item.name} | {item.port_number(net)} | {ADMITS[item.admits]} | {item.token} | {item.reach_text} |"
        )
    rows.append("| internal-frontend HTTP API | off | - | - | not listening (it would take the frontend's client CA) |")
    return "\n".join(rows) + "\n"
