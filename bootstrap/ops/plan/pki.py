"""Plan the PKI: one CA per trust domain, its trust bundle, and the leaf certificates each domain
issues (which, with which SANs and usages)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509

from ...core import backend
from ...core import pki
from ...core.config import UI_GATE_HOST, BundleConfig
from ...errors import BundleError
from ...core.pki import CA, LeafCert
from ...store import CA_KEY_MODE, CERT_MODE, KEY_MODE, Action, Layout, Skip, Write, read_optional
from .force import FORCE_HINT


# Trust domains, each with its own CA (the way Kubernetes keeps etcd, API-server clients and the
# front proxy apart):
#   server     certificates that servers present (frontend, JWKS, codec, PostgreSQL); the root
#              every client verifies with. Signs no client certificate, so it opens no listener.
#   client     what calls the frontend: each role's client cert, the UI's, the health check's.
#              The frontend trusts only this CA, and a token is still needed for every call.
#   internode  the one internode certificate (history, matching, worker, internal-frontend,
#              membership). The internal-frontend gives system admin WITHOUT a token to whoever
#              this CA vouches for, so it signs nothing else.
#   database   the PostgreSQL client certificate; PostgreSQL trusts only this CA.
DOMAINS = ("server", "client", "internode", "database")


@dataclass(frozen=True)
class LeafSpec:
    directory: str
    name: str
    common_name: str
    sans: tuple[str, ...]
    usage: str
    domain: str


def leaf_specs(config: BundleConfig) -> list[LeafSpec]:
    net, db = config.network, config.persistence
    specs = [
        LeafSpec("server", "frontend", net.frontend_host, frontend_sans(config), "server", "server"),
        LeafSpec("server", "internode", net.internode_server_name, internode_sans(config), "both", "internode"),
        # The server container's health check calls the frontend's gRPC health (no token needed).
        LeafSpec("server", "health", "temporal-healthcheck", (), "client", "client"),
        LeafSpec("jwks", "server", net.jwks_host, jwks_sans(config), "server", "server"),
        LeafSpec("ui", "client", "temporal-ui", (), "client", "client"),
        # The UI gate: the UI's server (callers need a client-domain cert), the frontend's client.
        LeafSpec("ui-gate", "server", UI_GATE_HOST, ui_gate_sans(config), "server", "server"),
        LeafSpec("ui-gate", "client", "temporal-ui-gate", (), "client", "client"),
        LeafSpec("codec", "server", config.codec.host, codec_sans(config), "server", "server"),
        LeafSpec("registrar", "system", "temporal-bundle:system", (), "client", "client"),
    ]
    if config.oidc.enabled:
        # HTTPS for Dex (the issuer), and for Grafana (compose profile monitoring), which logs in
        # through the same Dex.
        specs.append(LeafSpec("dex", "server", config.oidc.host, dex_sans(config), "server", "server"))
        specs.append(LeafSpec("grafana", "server", config.oidc.ui_public_host, grafana_sans(config), "server", "server"))
    if config.oidc.ui_login:
        # HTTPS for the Web UI itself (Secure session cookies), with Dex or an external issuer.
        specs.append(LeafSpec("ui", "server", config.oidc.ui_public_host, ui_sans(config), "server", "server"))
    if config.workload_identity.enabled or config.oidc.login_exchange:  # the UI gate exchanges Dex logins there
        specs.append(LeafSpec("exchange", "server", config.workload_identity.host, exchange_sans(config), "server", "server"))
    if db.driver == "postgres":
        specs += [
            LeafSpec("postgres", "server", db.host, postgres_sans(config), "server", "server"),
            # PostgreSQL `cert` auth maps the client certificate's CN to the database user.
            LeafSpec("dbclient", db.user, db.user, (), "client", "database"),
        ]
    specs += [
        LeafSpec("clients", role.name, f"temporal-bundle:{role.name}", (), "client", "client") for role in config.roles
    ]
    return specs


# --------------------------------------------------------------------------- SANs of the server certificates
# Each also names localhost and 127.0.0.1, for health checks and port-forwards on the host itself.

LOOPBACK = ("localhost", "127.0.0.1")


def frontend_sans(config: BundleConfig) -> tuple[str, ...]:
    return _unique((config.network.frontend_host, *config.network.frontend_sans, *LOOPBACK))


def internode_sans(config: BundleConfig) -> tuple[str, ...]:
    return _unique((config.network.internode_server_name, config.network.frontend_host, *LOOPBACK))


def postgres_sans(config: BundleConfig) -> tuple[str, ...]:
    return _unique((config.persistence.host, *config.persistence.postgres_sans, *LOOPBACK))


def jwks_sans(config: BundleConfig) -> tuple[str, ...]:
    return _unique((config.network.jwks_host, *config.network.jwks_sans, *LOOPBACK))


def exchange_sans(config: BundleConfig) -> tuple[str, ...]:
    wi = config.workload_identity
    # Workers in other Kubernetes namespaces reach it by its Service's namespaced names.
    return _unique((wi.host, *wi.sans, *_service_names(wi.host, config), *LOOPBACK))


def codec_sans(config: BundleConfig) -> tuple[str, ...]:
    return _unique((config.codec.host, *config.codec.sans, *LOOPBACK))


def dex_sans(config: BundleConfig) -> tuple[str, ...]:
    return _unique((config.oidc.host, "dex", *config.oidc.sans, *LOOPBACK))


def ui_gate_sans(config: BundleConfig) -> tuple[str, ...]:
    # Kubernetes reaches it by its Service's namespaced names.
    return _unique((UI_GATE_HOST, *_service_names(UI_GATE_HOST, config), *LOOPBACK))


def ui_sans(config: BundleConfig) -> tuple[str, ...]:
    return _unique((config.oidc.ui_public_host, config.network.ui_host, *LOOPBACK))


def grafana_sans(config: BundleConfig) -> tuple[str, ...]:
    return _unique((config.oidc.ui_public_host, config.network.grafana_host, *LOOPBACK))


def _service_names(service: str, config: BundleConfig) -> tuple[str, str]:
    """A Kubernetes Service's names from other namespaces: <svc>.<ns>.svc[.cluster.local]."""
    k8s = config.kubernetes.namespace
    return f"{service}.{k8s}.svc", f"{service}.{k8s}.svc.cluster.local"


def _unique(items) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


# --------------------------------------------------------------------------- CAs, one per trust domain


@dataclass
class PKIState:
    cas: dict[str, CA]  # the issuing CA of each domain
    # Domains of a bundle made before trust domains existed: they still share the server CA until
    # `rotate --kind trust-domains` separates them. Never split silently: that would cut off
    # every client holding a certificate from the shared CA.
    shared: tuple[str, ...]
    actions: list[Action]


def plan_ca(config: BundleConfig, layout: Layout, force: bool, now: datetime) -> PKIState:
    fresh = all(read_optional(p) is None for p in layout.domain_ca("server"))
    if force or fresh:
        reason = "created" if fresh else "replaced (--force)"
        cas = {domain: new_ca(config, domain, now) for domain in DOMAINS}
        actions: list[Action] = []
        for domain, ca in cas.items():
            cert_path, key_path = layout.domain_ca(domain)
            actions += [Write(cert_path, ca.cert_pem(), CERT_MODE, reason), Write(key_path, ca.key_pem(), CA_KEY_MODE, reason)]
        shared: tuple[str, ...] = ()
    else:
        cas, shared, actions = _load_or_create_cas(config, layout, now)
    for domain in DOMAINS:
        actions += _plan_trust_bundle(layout, domain, cas[domain], replace=force)
    return PKIState(cas, shared, actions)


def _load_or_create_cas(config: BundleConfig, layout: Layout, now: datetime):
    server = load_ca(layout)
    cas, shared, actions = {"server": server}, [], [Skip(p) for p in layout.domain_ca("server")]
    for domain in DOMAINS[1:]:
        cert_path, key_path = layout.domain_ca(domain)
        state = _domain_state(config, layout, domain, server)
        if state == "own":
            cas[domain] = load_ca(layout, domain)
            actions += [Skip(cert_path), Skip(key_path)]
        elif state == "shared":
            cas[domain] = server
            shared.append(domain)
        else:  # no certificate of this domain exists yet: nothing depends on a CA for it
            cas[domain] = new_ca(config, domain, now)
            actions += [Write(cert_path, cas[domain].cert_pem(), CERT_MODE, "created"),
                        Write(key_path, cas[domain].key_pem(), CA_KEY_MODE, "created")]
    check_distinct(layout, {d: ca for d, ca in cas.items() if d not in shared})
    return cas, tuple(shared), actions


def _domain_state(config: BundleConfig, layout: Layout, domain: str, server: CA) -> str:
    """own (its CA files exist), shared (a bundle from before trust domains) or none (no CA and
    no certificate yet)."""
    if any(p.exists() for p in layout.domain_ca(domain)):
        return "own"
    return "shared" if _issued_by_shared_ca(config, layout, domain, server) else "none"


def _issued_by_shared_ca(config: BundleConfig, layout: Layout, domain: str, server: CA) -> bool:
    """True for a bundle from before trust domains: this domain's certificates exist and the one
    CA signed them. Certificates from any other issuer mean the domain's CA file went missing."""
    found = [layout.leaf(s.directory, s.name)[0] for s in leaf_specs(config) if s.domain == domain]
    found = [p for p in found if p.exists()]
    if not found:
        return False
    for path in found:
        cert = pki.load_cert(read_optional(path) or b"", str(path))
        if not pki.signed_by(cert, server.cert):
            missing = layout.domain_ca(domain)[0]
            raise BundleError(f"{missing} (the {domain} CA) is missing but {path} exists; {FORCE_HINT.replace('it', 'the CA')}")
    return True


def check_distinct(layout: Layout, cas: dict[str, CA]) -> None:
    seen: dict[bytes, str] = {}
    for domain, ca in cas.items():
        key = pki.public_key_bytes(ca.cert.public_key())
        if key in seen:
            raise BundleError(
                f"{layout.domain_ca(domain)[0]} is the same CA as {layout.domain_ca(seen[key])[0]}: "
                f"the {domain} and {seen[key]} trust domains need CAs of their own"
            )
        seen[key] = domain


def load_ca(layout: Layout, domain: str = "server") -> CA:
    cert_path, key_path = layout.domain_ca(domain)
    cert_pem, key_pem = read_optional(cert_path), read_optional(key_path)
    if cert_pem is None or key_pem is None:
        missing = cert_path if cert_pem is None else key_path
        raise BundleError(f"{missing} is missing; {FORCE_HINT.replace('it', 'the CA')}")
    try:
        return CA.from_pem(cert_pem, key_pem)
    except BundleError as exc:
        raise BundleError(f"{cert_path}: {exc}; {FORCE_HINT.replace('it', 'the CA')}") from None


def load_cas(config: BundleConfig, layout: Layout) -> tuple[dict[str, CA], tuple[str, ...]]:
    """The issuing CA of every domain, for commands that never create one (rotate)."""
    server = load_ca(layout)
    cas, shared = {"server": server}, []
    for domain in DOMAINS[1:]:
        if _domain_state(config, layout, domain, server) == "shared":
            cas[domain], shared = server, shared + [domain]
        else:
            cas[domain] = load_ca(layout, domain)  # a missing CA is an error here
    check_distinct(layout, {d: ca for d, ca in cas.items() if d not in shared})
    return cas, tuple(shared)


def new_ca(config: BundleConfig, domain: str, now: datetime) -> CA:
    name = config.pki.ca_common_name if domain == "server" else f"{config.pki.ca_common_name} ({domain})"
    return CA.create(
        name,
        organization=config.pki.organization,
        key_algorithm=config.pki.key_algorithm,
        lifetime=config.pki.ca_lifetime,
        now=now,
        key=backend.new_root_key(config, config.pki.key_algorithm),
    )


def _plan_trust_bundle(layout: Layout, domain: str, ca: CA, replace: bool) -> list[Action]:
    bundle, current, next_ = layout.trust_files(domain)
    existing = read_optional(bundle)
    if existing is None or replace:
        reason = "created" if existing is None else "replaced (--force)"
        return [Write(p, ca.cert_pem(), CERT_MODE, reason) for p in (bundle, current, next_)]
    try:
        trusted = pki.load_certs(existing, str(bundle))
    except BundleError as exc:
        raise BundleError(f"{exc}; {FORCE_HINT}") from None
    actions: list[Action] = []
    if any(c == ca.cert for c in trusted):
        actions.append(Skip(bundle))
    else:
        actions.append(Write(bundle, existing + ca.cert_pem(), CERT_MODE, "added the issuing CA"))
    for path in (current, next_):
        # Missing only in bundles made before the per-CA files existed, or after a crash.
        actions.append(Skip(path) if path.exists() else Write(path, ca.cert_pem(), CERT_MODE, "created"))
    return actions


# --------------------------------------------------------------------------- leaf certificates


def plan_leaves(
    config: BundleConfig, layout: Layout, cas: dict[str, CA], force: bool, now: datetime,
    renew_before: timedelta | None = None, domains: tuple[str, ...] = DOMAINS,
) -> list[Action]:
    actions: list[Action] = []
    for spec in leaf_specs(config):
        if spec.domain in domains:
            actions += plan_leaf(config, layout, cas[spec.domain], spec, force, now, renew_before)
    return actions


def plan_leaf(
    config: BundleConfig,
    layout: Layout,
    ca: CA,
    spec: LeafSpec,
    force: bool,
    now: datetime,
    renew_before: timedelta | None = None,
) -> list[Action]:
    cert_path, key_path = layout.leaf(spec.directory, spec.name)
    cert_pem, key_pem = read_optional(cert_path), read_optional(key_path)
    if cert_pem is None and key_pem is None:
        return _issue(config, ca, spec, cert_path, key_path, now, "created")
    if force:
        return _issue(config, ca, spec, cert_path, key_path, now, "replaced (--force)")
    if cert_pem is None or key_pem is None:
        missing = cert_path if cert_pem is None else key_path
        raise BundleError(f"{missing} is missing but its partner exists; {FORCE_HINT}")
    try:
        cert = pki.load_cert(cert_pem, str(cert_path))
        key = pki.load_private_key(key_pem, str(key_path))
    except BundleError as exc:
        raise BundleError(f"{exc}; {FORCE_HINT}") from None
    if not pki.keys_match(cert, key):
        if not any(pki.signed_by(cert, issuer) for issuer in _trusted_cas(layout, spec.domain, ca)):
            raise BundleError(f"{cert_path} and {key_path} do not belong together; {FORCE_HINT}")
        # Both files are ours, written one after the other, and a crash fell between them.
        return _issue(config, ca, spec, cert_path, key_path, now, "re-issued: key and cert did not match (interrupted write)")
    stale = _stale_reason(cert, ca, spec, now, renew_before)
    if stale:
        return _issue(config, ca, spec, cert_path, key_path, now, f"re-issued: {stale}")
    return [Skip(cert_path), Skip(key_path)]


def _trusted_cas(layout: Layout, domain: str, ca: CA) -> list[x509.Certificate]:
    try:
        return [ca.cert, *pki.load_certs(read_optional(layout.trust_files(domain)[0]) or b"", "trust bundle")]
    except BundleError:
        return [ca.cert]


def _stale_reason(cert: x509.Certificate, ca: CA, spec: LeafSpec, now: datetime, renew_before) -> str | None:
    if not pki.signed_by(cert, ca.cert):
        return "issued by another CA"
    if set(pki.sans_of(cert)) != set(spec.sans):
        return "SANs differ from the config"
    if pki.extended_key_usages(cert) != set(pki.USAGES[spec.usage]):
        return "extended key usage differs"
    left = cert.not_valid_after_utc - now
    if left <= timedelta(0):
        return "expired"
    if renew_before is not None and left <= renew_before:
        return f"expires in {left.days}d (renew_before {renew_before.days}d)"
    return None


def _issue(config, ca: CA, spec: LeafSpec, cert_path, key_path, now, reason) -> list[Action]:
    leaf: LeafCert = ca.issue_cert(
        *spec.sans,
        common_name=spec.common_name,
        usage=spec.usage,
        lifetime=config.pki.leaf_lifetime,
        key_algorithm=config.pki.key_algorithm,
        organization=config.pki.organization,
        now=now,
    )
    # Key first: a reader that sees the new cert must never find the old key beside it. The
    # server's hot reload re-reads both files, and the lock keeps our own runs from interleaving.
    return [Write(key_path, leaf.key_pem(), KEY_MODE, reason), Write(cert_path, leaf.cert_pem(), CERT_MODE, reason)]
