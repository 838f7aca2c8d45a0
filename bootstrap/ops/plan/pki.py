"""Decide what a bootstrap step must write, from the config and what is already on disk.

Planning reads and validates everything first and returns a list of actions; only then does the
store carry them out. So a corrupt key or a bad config fails before a single byte is written.

The rule for existing files: a file we can recognise as ours and that is still right is kept
("already exists, skipped"); one that is ours but stale (SANs changed, issued by another CA,
expired) is replaced with the reason said; one we cannot read as ours (garbage, a foreign file, a
key that does not match its cert) is never replaced without --force. The CA and the signing key are
never replaced without --force, whatever their state.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

import yaml

from cryptography import x509

from ...core import backend
from ...core import pki
from ...core.config import UI_GATE_HOST, BundleConfig
from ...errors import BundleError
from ...core.pki import CA, LeafCert
from ...store import CA_KEY_MODE, CERT_MODE, KEY_MODE, Action, Delete, Layout, Skip, Write, read_optional
from ..upgrade import Version, check_step, image_version, parse_version
from ...core.tokens import PERMISSIONS_CLAIM, SigningKey, Token, decode_unverified, jwks_bytes, mint_token

FORCE_HINT = "refusing to replace it without --force"


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
        LeafSpec("server", "frontend", net.frontend_host, config.frontend_sans(), "server", "server"),
        LeafSpec("server", "internode", net.internode_server_name, config.internode_sans(), "both", "internode"),
        # The server container's health check calls the frontend's gRPC health (no token needed).
        LeafSpec("server", "health", "temporal-healthcheck", (), "client", "client"),
        LeafSpec("jwks", "server", net.jwks_host, config.jwks_sans(), "server", "server"),
        LeafSpec("ui", "client", "temporal-ui", (), "client", "client"),
        # The UI gate: the UI's server (callers need a client-domain cert), the frontend's client.
        LeafSpec("ui-gate", "server", UI_GATE_HOST, config.ui_gate_sans(), "server", "server"),
        LeafSpec("ui-gate", "client", "temporal-ui-gate", (), "client", "client"),
        LeafSpec("codec", "server", config.codec.host, config.codec_sans(), "server", "server"),
        LeafSpec("registrar", "system", "temporal-bundle:system", (), "client", "client"),
    ]
    if config.oidc.enabled:
        # HTTPS for Dex (the issuer), and for Grafana (compose profile monitoring), which logs in
        # through the same Dex.
        specs.append(LeafSpec("dex", "server", config.oidc.host, config.dex_sans(), "server", "server"))
        specs.append(LeafSpec("grafana", "server", config.oidc.ui_public_host, config.grafana_sans(), "server", "server"))
    if config.oidc.ui_login:
        # HTTPS for the Web UI itself (Secure session cookies), with Dex or an external issuer.
        specs.append(LeafSpec("ui", "server", config.oidc.ui_public_host, config.ui_sans(), "server", "server"))
    if config.workload_identity.enabled:
        specs.append(LeafSpec("exchange", "server", config.workload_identity.host, config.exchange_sans(), "server", "server"))
    if db.driver == "postgres":
        specs += [
            LeafSpec("postgres", "server", db.host, config.postgres_sans(), "server", "server"),
            # PostgreSQL `cert` auth maps the client certificate's CN to the database user.
            LeafSpec("dbclient", db.user, db.user, (), "client", "database"),
        ]
    specs += [
        LeafSpec("clients", role.name, f"temporal-bundle:{role.name}", (), "client", "client") for role in config.roles
    ]
    return specs


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


# --------------------------------------------------------------------------- signing keys and JWKS


@dataclass
class SigningState:
    active: SigningKey
    published: list[SigningKey]
    actions: list[Action]


def load_signing_keys(layout: Layout) -> dict[str, SigningKey]:
    return _load_key_dir(layout.signing_keys, FORCE_HINT)


def _load_key_dir(directory, hint: str) -> dict[str, SigningKey]:
    keys = {}
    if not directory.is_dir():
        return keys
    for path in sorted(directory.glob("*.key")):
        key = SigningKey.from_pem(read_optional(path) or b"", str(path))
        if key.kid != path.stem:
            raise BundleError(f"{path}: file name does not match the key's kid {key.kid}; {hint}")
        keys[key.kid] = key
    return keys


def plan_signing_key(config: BundleConfig, layout: Layout, force: bool, exchange: SigningKey | None = None) -> SigningState:
    active_raw = read_optional(layout.active_kid)
    if force or active_raw is None:
        on_disk = sorted(layout.signing_keys.glob("*.key")) if layout.signing_keys.is_dir() else []
        if on_disk and not force:
            raise BundleError(f"{layout.active_kid} is missing but signing keys exist; {FORCE_HINT}")
        key = SigningKey.generate(config.jwt.algorithm, lambda alg: backend.new_root_key(config, alg))
        reason = "created" if active_raw is None and not on_disk else "replaced (--force)"
        actions: list[Action] = [Delete(p, "dropped (--force)") for p in on_disk if p.stem != key.kid]
        actions += [
            Write(layout.signing_key(key.kid), key.private_pem(), KEY_MODE, reason),
            Write(layout.active_kid, (key.kid + "\n").encode(), CERT_MODE, reason),
        ]
        published = [key]
    else:
        keys = load_published_keys(layout)
        key = active_signing_key(layout, keys)
        actions = [Skip(layout.signing_key(key.kid)), Skip(layout.active_kid)]
        published = list(keys.values())
    actions.append(plan_jwks(layout, published, force, exchange))
    return SigningState(key, published, actions)


def load_published_keys(layout: Layout) -> dict[str, SigningKey]:
    try:
        return load_signing_keys(layout)
    except BundleError as exc:
        message = str(exc)
        raise BundleError(message if FORCE_HINT in message else f"{message}; {FORCE_HINT}") from None


def active_signing_key(layout: Layout, keys: dict[str, SigningKey]) -> SigningKey:
    raw = read_optional(layout.active_kid)
    kid = (raw or b"").decode(errors="replace").strip()
    if kid not in keys:
        raise BundleError(f"{layout.active_kid} names kid {kid!r}, which has no key in {layout.signing_keys}")
    return keys[kid]


def plan_jwks(layout: Layout, published: list[SigningKey], force: bool, exchange: SigningKey | None = None,
              exchange_others: list[SigningKey] | None = None) -> Action:
    """The JWKS of the bundle's signing keys, plus the token exchange's key when it has one and the
    exchange keys a rotation publishes beside it (a rotation of the bundle's keys keeps them all).
    None means: as on disk."""
    exchange = exchange or load_exchange_key(layout)
    others = list(load_exchange_keys(layout).values()) if exchange_others is None else exchange_others
    chosen = published + ([exchange] if exchange else [])
    chosen += [k for k in sorted(others, key=lambda k: k.kid) if k.kid not in {c.kid for c in chosen}]
    wanted = jwks_bytes(chosen)
    existing = read_optional(layout.jwks)
    if existing == wanted:
        return Skip(layout.jwks)
    if existing is not None and not force and not _is_jwks(existing):
        raise BundleError(f"{layout.jwks} is not a JWKS document we wrote; {FORCE_HINT}")
    return Write(layout.jwks, wanted, CERT_MODE, "created" if existing is None else "updated: published keys changed")


def load_exchange_key(layout: Layout) -> SigningKey | None:
    pem = read_optional(layout.exchange_signing_key)
    if pem is None:
        return None
    try:
        return SigningKey.from_pem(pem, str(layout.exchange_signing_key))
    except BundleError as exc:
        raise BundleError(f"{exc}; {FORCE_HINT}") from None


def load_exchange_keys(layout: Layout) -> dict[str, SigningKey]:
    """The exchange keys published beside the one it signs with (mid-rotation)."""
    hint = "inspect it: rotate --kind exchange-key keeps its next and retiring keys there"
    try:
        return _load_key_dir(layout.exchange_keys, hint)
    except BundleError as exc:
        message = str(exc)
        raise BundleError(message if hint in message else f"{message}; {hint}") from None


def plan_exchange_key(config: BundleConfig, layout: Layout, force: bool) -> tuple[SigningKey | None, list[Action]]:
    """The token exchange's own signing key, made once workload_identity is enabled. --force keeps
    it: replacing it would only cut off live workers until they exchange again."""
    existing = load_exchange_key(layout)
    if existing is not None:
        return existing, [Skip(layout.exchange_signing_key)]
    if not config.workload_identity.enabled:
        return None, []
    key = SigningKey.generate(config.jwt.algorithm)
    return key, [Write(layout.exchange_signing_key, key.private_pem(), KEY_MODE, "created (token exchange signing key)")]


def _is_jwks(data: bytes) -> bool:
    try:
        doc = json.loads(data)
    except ValueError:
        return False
    return isinstance(doc, dict) and isinstance(doc.get("keys"), list)


# --------------------------------------------------------------------------- facts fixed at creation


def _cluster_record(layout: Layout) -> dict | None:
    raw = read_optional(layout.cluster_record)
    if raw is None:
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        record = None
    shards = record.get("num_history_shards") if isinstance(record, dict) else None
    version = record.get("temporal_version", "") if isinstance(record, dict) else None
    if not isinstance(shards, int) or isinstance(shards, bool) or not isinstance(version, str):
        raise BundleError(f"{layout.cluster_record} is corrupt; inspect it (it records the history shard count "
                          "and the Temporal release that last migrated the database)")
    return record


def recorded_shards(layout: Layout) -> int | None:
    """The history shard count the cluster's database was created with, if the bundle knows it:
    from its record, else (bundles made before the record) from the server config it rendered."""
    record = _cluster_record(layout)
    if record is not None:
        return record["num_history_shards"]
    rendered = read_optional(layout.config_dir / "temporal.yaml")
    if rendered is None:
        return None
    try:
        return int(yaml.safe_load(rendered)["persistence"]["numHistoryShards"])
    except (yaml.YAMLError, KeyError, TypeError, ValueError):
        raise BundleError(f"{layout.config_dir / 'temporal.yaml'}: cannot read persistence.numHistoryShards") from None


def recorded_version(layout: Layout) -> Version | None:
    """The Temporal release that last migrated the cluster's database (None: not recorded yet)."""
    record = _cluster_record(layout)
    if not record or not record.get("temporal_version"):
        return None
    try:
        return parse_version(record["temporal_version"])
    except BundleError:
        raise BundleError(f"{layout.cluster_record} is corrupt: temporal_version "
                          f"{record['temporal_version']!r} is not a release") from None


def _check_server_release(layout: Layout, server_image: str) -> Version:
    """The release TEMPORAL_SERVER_IMAGE names, refused when it is older than the database (a
    schema a newer server migrated is never safe for an older one) or skips a minor."""
    version = image_version(server_image, "TEMPORAL_SERVER_IMAGE")
    last = recorded_version(layout)
    if last is not None and version < last:
        raise BundleError(
            f"TEMPORAL_SERVER_IMAGE is {server_image} (Temporal {version}) but this cluster's database was last "
            f"migrated by Temporal {last}: an older server is refused (set the {last} image variables again, "
            "or restore a backup taken before the upgrade)"
        )
    if last is not None:
        try:
            check_step(last, version)
        except BundleError as exc:
            raise BundleError(f"TEMPORAL_SERVER_IMAGE is {server_image}: {exc}") from None
    return version


def plan_cluster_record(config: BundleConfig, layout: Layout, server_image: str | None = None) -> Action:
    """private/cluster.json, facts about the database that only move one way:
    - the history shard count it was created with: Temporal maps every workflow to a shard by that
      count, so changing it later orphans existing histories (refused);
    - the Temporal release of the server about to run on it (server_image, when the caller starts
      one): never older than the recorded one, which already migrated the schema (refused)."""
    wanted, recorded = config.persistence.num_history_shards, recorded_shards(layout)
    if recorded is not None and recorded != wanted:
        raise BundleError(
            f"{config.source}: persistence.num_history_shards is {wanted} but this cluster was created with "
            f"{recorded}; the count can never change once the database has data (set it back to {recorded})"
        )
    record = _cluster_record(layout)
    updated = dict(record or {"num_history_shards": wanted})
    if server_image:
        updated["temporal_version"] = str(_check_server_release(layout, server_image))
    if updated == record:
        return Skip(layout.cluster_record)
    data = (json.dumps(updated, indent=2) + "\n").encode()
    reason = "created" if record is None else f"updated: Temporal {updated['temporal_version']} on this database"
    return Write(layout.cluster_record, data, CERT_MODE, reason)


# --------------------------------------------------------------------------- role tokens


def token_needs_refresh(token_text: str, config: BundleConfig, role, active_kid: str, now: datetime) -> str | None:
    """Why a token on disk must be re-minted, or None if it is still good."""
    header, claims = decode_unverified(token_text)
    if header.get("kid") != active_kid:
        return "signed by a retired or other key"
    wanted = list(role.permissions)
    if any(claims.get(name) != wanted for name in ("permissions", PERMISSIONS_CLAIM, config.oidc.permissions_claim)):
        return "permissions differ from the config"
    if claims.get("aud") != config.jwt.audience or claims.get("iss") != config.jwt.issuer:
        return "issuer or audience differs from the config"
    issued, expires = claims.get("iat"), claims.get("exp")
    if not isinstance(issued, int) or not isinstance(expires, int):
        return "no iat/exp"
    if expires - issued != int(role.token_lifetime.total_seconds()):
        return "lifetime differs from the config"
    # Refresh at two thirds of the lifetime, so a client re-reading the file never holds an
    # expired token even if a refresh run is missed.
    if now.timestamp() >= issued + (expires - issued) * 2 / 3:
        return "past two thirds of its lifetime"
    return None


def plan_tokens(
    config: BundleConfig, layout: Layout, key: SigningKey, force: bool, now: datetime, roles=None
) -> tuple[list[Action], list[Token]]:
    actions: list[Action] = []
    minted: list[Token] = []
    for role in roles or config.roles:
        action, token = _plan_token(config, layout.token(role.name), role, key, force, now)
        actions.append(action)
        minted += [token] if token else []
    return actions, minted


def plan_registrar_token(config: BundleConfig, layout: Layout, key: SigningKey, force: bool, now: datetime) -> list[Action]:
    """The system token of the namespace-registration job, kept apart from tokens/ (the job
    mounts registrar/ only). Fresh at every `init`, which runs before the job does."""
    action, _ = _plan_token(config, layout.registrar_token, config.role("system"), key, force, now)
    return [action]


def _plan_token(config: BundleConfig, path, role, key: SigningKey, force: bool, now: datetime) -> tuple[Action, Token | None]:
    existing = read_optional(path)
    reason = "created"
    if existing is not None:
        try:
            reason = token_needs_refresh(existing.decode("ascii").strip(), config, role, key.kid, now)
        except (BundleError, UnicodeDecodeError):
            if not force:
                raise BundleError(f"{path} is not a readable JWT; {FORCE_HINT}") from None
            reason = "replaced (--force)"
        if reason is None and not force:
            return Skip(path), None
        reason = f"re-minted: {reason}" if reason else "re-minted (--force)"
    token = mint_token(
        key,
        role=role.name,
        permissions=role.permissions,
        issuer=config.jwt.issuer,
        audience=config.jwt.audience,
        lifetime=role.token_lifetime,
        now=now,
        claim=config.oidc.permissions_claim,
    )
    return Write(path, (token.encoded + "\n").encode(), KEY_MODE, reason), token
