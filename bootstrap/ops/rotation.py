"""Zero-downtime rotation, as explicit resumable phases.

Each call to `step()` reads the disk (and private/rotation.json), decides the next phase, and
returns the actions for it with the new state written LAST. Every action is an atomic file write,
and every phase is idempotent, so a crash (kill -9) at any point leaves a state from which the
next `rotate` finishes the job.

signing-key:  (none) --publish new key beside the old in the JWKS--> published
              --after jwt.refresh_interval: mint tokens with the new key, make it active--> activated
              --after the longest token lifetime: drop the old key from disk and JWKS--> done
exchange-key: the token exchange's own key, the same three phases: (none) --publish a new key
              (private/exchange-keys/) beside the old--> published --after jwt.refresh_interval: the
              exchange signs with it (exchange/signing.key, re-read without restart)--> activated
              --after workload_identity.token_lifetime: drop the old key from disk and JWKS--> done
ca:           (none) --a new CA per trust domain in private/ca[-<domain>]-next.*, each domain's
              trust = old + new--> trusted
              --after the TLS refresh interval: leaves re-issued from the new CAs, CAs swapped--> reissued
              --after the TLS refresh interval: each domain trusts its new CA only--> done
trust-domains: the same three phases for the domains a bundle made before trust domains still
              shares with the server CA: each gets a CA of its own; the server CA stays.
certs:        one step: leaves due for renewal (or all, with --all) re-issued from the current CA.
codec-key:    one step: a new payload data key made active; every old key kept for decoding (per
              namespace with --namespace; under per-namespace custody each ring is its own write).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography.hazmat.primitives import serialization

from ..core import pki
from ..core.backend import codec_kek
from ..core.config import BundleConfig
from ..errors import BundleError
from ..core.pki import CA
from .key_store import KEY_STORES, KeyStore
from .plan import DOMAINS, load_ca, load_cas, new_ca, plan_leaves
from ..store import CA_KEY_MODE, CERT_MODE, KEY_MODE, Action, Delete, Layout, Write, read_optional

KINDS = ("certs", "signing-key", "exchange-key", "ca", "trust-domains", "codec-key")
# Slack on top of the server's refresh intervals, for timer jitter and clock drift.
MAX_MARGIN = timedelta(seconds=10)


def margin(config: BundleConfig) -> timedelta:
    return max(timedelta(seconds=1), min(MAX_MARGIN, config.tls_refresh_interval))


@dataclass
class Step:
    kind: str
    phase: str
    message: str
    actions: list[Action] = field(default_factory=list)
    due: datetime | None = None  # when the next phase may run; None when finished
    waiting_for: str = ""

    @property
    def done(self) -> bool:
        return self.phase == "done"


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=pki.utcnow().tzinfo)


def read_state(layout: Layout) -> dict | None:
    raw = read_optional(layout.rotation_state)
    if raw is None:
        return None
    try:
        state = json.loads(raw)
        if state.get("kind") not in KINDS or not isinstance(state.get("phase"), str):
            raise ValueError("missing kind or phase")
        return state
    except ValueError as exc:
        raise BundleError(f"{layout.rotation_state} is corrupt ({exc}); inspect it, then remove it to start over") from None


def _state_write(layout: Layout, state: dict) -> Write:
    data = (json.dumps(state, indent=2, sort_keys=True) + "\n").encode()
    return Write(layout.rotation_state, data, KEY_MODE, f"rotation {state['kind']}: phase {state['phase']}")


def _state_delete(layout: Layout, kind: str) -> list[Action]:
    if layout.rotation_state.exists():
        return [Delete(layout.rotation_state, f"rotation {kind}: finished")]
    return []


def current_kind(layout: Layout, requested: str | None) -> str:
    state = read_state(layout)
    if requested in ("certs", "codec-key"):
        return requested  # re-issuing leaves, or adding a data key, is safe at any phase of the others
    in_progress = state["kind"] if state else _unrecorded_rotation(layout)
    if in_progress is not None:
        phase = state["phase"] if state else "started (not yet recorded)"
        if requested and requested != in_progress:
            raise BundleError(f"a {in_progress} rotation is in phase {phase}; finish it first (rotate --kind {in_progress})")
        return in_progress
    if requested is None:
        raise BundleError("no rotation in progress; choose one with --kind " + "|".join(k for k in KINDS if k != "trust-domains"))
    return requested


def _unrecorded_rotation(layout: Layout) -> str | None:
    """A rotation killed before it recorded its first phase leaves only its new files behind."""
    for domain in DOMAINS:
        if any(p.exists() for p in layout.next_ca(domain)):
            # A next CA for a domain without a CA of its own can only be a separation.
            return "ca" if layout.domain_ca(domain)[0].exists() else "trust-domains"
    active = (read_optional(layout.active_kid) or b"").decode(errors="replace").strip()
    if layout.signing_keys.is_dir() and any(p.stem != active for p in layout.signing_keys.glob("*.key")):
        return "signing-key"
    if layout.exchange_keys.is_dir() and any(layout.exchange_keys.glob("*.key")):
        return "exchange-key"
    return None


def step(config: BundleConfig, layout: Layout, kind: str, now: datetime, all_certs: bool = False, probe=None,
         namespaces=None) -> Step:
    """`probe(key) -> bool`, if given, asks the live server whether it accepts tokens signed by
    `key`; the signing-key rollover then activates the new key only once the server knows it."""
    if kind == "certs":
        return _step_certs(config, layout, now, all_certs)
    if kind == "codec-key":
        custody, _ = codec_kek(config, layout)
        actions, message = custody.rotate(layout, now, namespaces)
        return Step("codec-key", "done", message, actions)
    if kind in KEY_STORES:
        return _step_key(KEY_STORES[kind](config, layout), config, layout, now, probe)
    return _step_ca(config, layout, now, kind)


def _waiting(kind: str, phase: str, due: datetime, what: str) -> Step:
    return Step(kind, phase, f"phase {phase}", due=due, waiting_for=f"{what} (until {_iso(due)})")


# --------------------------------------------------------------------------- leaf certificates


def _step_certs(config: BundleConfig, layout: Layout, now: datetime, all_certs: bool) -> Step:
    cas, _ = load_cas(config, layout)
    actions = plan_leaves(config, layout, cas, all_certs, now, renew_before=config.pki.renew_before)
    changed = sum(isinstance(a, Write) for a in actions) // 2
    return Step("certs", "done", f"{changed} certificate(s) re-issued from the current CA", actions)


# --------------------------------------------------------------------------- signing and exchange keys
#
# One machine over either key store (key_store.py): publish the new key beside the active one,
# activate it once the server has refetched the JWKS, retire the old once its tokens expired.


def _step_key(store: KeyStore, config: BundleConfig, layout: Layout, now: datetime, probe=None) -> Step:
    state = read_state(layout)
    if state is None:
        return _publish_new_key(store, config, layout, now)
    due = _parse_time(state["due"])
    if now < due:
        what = "the server to refetch the JWKS" if state["phase"] == "published" else store.old_tokens_expire
        return _waiting(store.kind, state["phase"], due, what)
    if state["phase"] == "published":
        new = store.keys.get(state["new_kid"])
        if probe is not None and new is not None and not probe(new):
            return _waiting(store.kind, "published", now + margin(config), store.not_accepted)
        return _activate_new_key(store, config, layout, state, now)
    if state["phase"] == "activated":
        return _retire_old_keys(store, layout, state)
    raise BundleError(f"{layout.rotation_state}: unknown {store.kind} phase {state['phase']!r}")


def _publish_new_key(store: KeyStore, config: BundleConfig, layout: Layout, now: datetime) -> Step:
    pending = store.unrecorded()
    if pending:  # a crash after writing the key but before recording the phase: adopt it
        new, actions = pending[0], []
        note = f"resuming: published {store.noun} {new.kid} was not recorded"
    else:
        new, actions = store.new_key()
        note = f"new {store.noun} {new.kid} published beside {store.active.kid}"
    actions.append(store.publish(new))
    due = now + config.jwt.refresh_interval + margin(config)
    actions.append(_state_write(layout, {"kind": store.kind, "phase": "published", "new_kid": new.kid,
                                         "old_kid": store.active.kid, "due": _iso(due)}))
    return Step(store.kind, "published", note, actions, due, f"the server to refetch the JWKS (until {_iso(due)})")


def _activate_new_key(store: KeyStore, config: BundleConfig, layout: Layout, state: dict, now: datetime) -> Step:
    new, actions = store.activate(state, now)
    due = now + store.token_lifetime() + margin(config)
    actions.append(_state_write(layout, {**state, "phase": "activated", "due": _iso(due)}))
    return Step(store.kind, "activated", store.signs_with.format(kid=new.kid), actions, due,
                f"{store.old_tokens_expire} (until {_iso(due)})")


def _retire_old_keys(store: KeyStore, layout: Layout, state: dict) -> Step:
    retired, actions = store.retire(state)
    actions += _state_delete(layout, store.kind)
    message = f"retired {', '.join(retired) or 'nothing'}; {store.publishes_only.format(kid=store.active.kid)}"
    return Step(store.kind, "done", message, actions)


# --------------------------------------------------------------------------- CAs
#
# One mechanism serves `ca` (every trust domain gets a new CA) and `trust-domains` (the domains a
# bundle made before trust domains still shares with the server CA get CAs of their own): per
# domain, an old CA is replaced by a new one in three phases. The state names each domain's old
# and new CA by fingerprint.


def _load_next_ca(layout: Layout, domain: str) -> CA | None:
    cert_path, key_path = layout.next_ca(domain)
    cert_pem, key_pem = read_optional(cert_path), read_optional(key_path)
    if cert_pem is None or key_pem is None:
        return None
    return CA.from_pem(cert_pem, key_pem)


def _state_domains(state: dict) -> dict[str, dict]:
    if "domains" in state:
        return state["domains"]
    # A CA rotation started before trust domains existed rotated the one (server) CA.
    return {"server": {"old": state["old_ca"], "new": state["new_ca"]}}


def _step_ca(config: BundleConfig, layout: Layout, now: datetime, kind: str) -> Step:
    state = read_state(layout)
    if state is None:
        return _trust_both(config, layout, now, kind)
    due = _parse_time(state["due"])
    if now < due:
        what = "servers to reload the trust bundle" if state["phase"] == "trusted" else "servers to reload the new certificates"
        return _waiting(kind, state["phase"], due, what)
    if state["phase"] == "trusted":
        return _reissue_from_new_ca(config, layout, state, now)
    if state["phase"] == "reissued":
        return _drop_old_ca(config, layout, state)
    if state["phase"] == "restart-pending":
        return _drop_old_ca(config, layout, state, only=("database",))
    raise BundleError(f"{layout.rotation_state}: unknown {kind} phase {state['phase']!r}")


def _domains_to_rotate(config: BundleConfig, layout: Layout, kind: str) -> tuple[dict[str, CA], tuple[str, ...]]:
    cas, shared = load_cas(config, layout)
    if kind == "trust-domains":
        if not shared:
            raise BundleError("the trust domains are already separate: every domain has its own CA")
        return cas, shared
    if shared:
        raise BundleError(
            f"trust domains {', '.join(shared)} still share the server CA; separate them first "
            "(rotate --kind trust-domains), then rotate the CAs"
        )
    return cas, DOMAINS


def _trust_both(config, layout, now, kind) -> Step:
    cas, domains = _domains_to_rotate(config, layout, kind)
    actions: list[Action] = []
    record = {}
    for domain in domains:
        new = _load_next_ca(layout, domain)
        if new is None:
            new = new_ca(config, domain, now)
            cert_path, key_path = layout.next_ca(domain)
            actions += [Write(key_path, new.key_pem(), CA_KEY_MODE, f"next {domain} CA"),
                        Write(cert_path, new.cert_pem(), CERT_MODE, f"next {domain} CA")]
        bundle, _, next_ = layout.trust_files(domain)
        actions.append(_trust_write(next_, [new.cert], f"trust the new {domain} CA beside the old"))
        actions.append(_trust_write(bundle, [cas[domain].cert, new.cert], f"trust old and new {domain} CA"))
        record[domain] = {"old": pki.fingerprint(cas[domain].cert), "new": pki.fingerprint(new.cert)}
    due = now + config.tls_refresh_interval + margin(config)
    actions.append(_state_write(layout, {"kind": kind, "phase": "trusted", "domains": record, "due": _iso(due)}))
    return Step(kind, "trusted", f"new CA for {', '.join(domains)}; each trusts old and new", actions, due,
                f"servers to reload the trust bundle (until {_iso(due)})")


def _trust_write(path, certs, reason: str) -> Write:
    data = b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in certs)
    return Write(path, data, CERT_MODE, reason)


def _promoted_ca(layout: Layout, domain: str, fingerprints: dict) -> CA | None:
    """The domain's own CA files, if they already hold the new CA (a resumed run after the swap)."""
    cert_pem = read_optional(layout.domain_ca(domain)[0])
    if cert_pem is None or pki.fingerprint(pki.load_cert(cert_pem, str(layout.domain_ca(domain)[0]))) != fingerprints["new"]:
        return None
    return load_ca(layout, domain)


def _reissue_from_new_ca(config, layout, state, now) -> Step:
    domains = _state_domains(state)
    cas: dict[str, CA] = {}
    actions: list[Action] = []
    for domain, fingerprints in domains.items():
        promoted = _promoted_ca(layout, domain, fingerprints)
        new = promoted or _load_next_ca(layout, domain)
        if new is None or pki.fingerprint(new.cert) != fingerprints["new"]:
            raise BundleError(f"{layout.rotation_state}: the new {domain} CA {fingerprints['new'][:16]} is neither pending nor active")
        cas[domain] = new
        if promoted is None:
            # Key before cert: the cert's fingerprint is what tells a resumed run the swap happened.
            cert_path, key_path = layout.domain_ca(domain)
            actions += [Write(key_path, new.key_pem(), CA_KEY_MODE, f"new {domain} CA is now issuing"),
                        Write(cert_path, new.cert_pem(), CERT_MODE, f"new {domain} CA is now issuing")]
        actions += [Delete(p, f"next {domain} CA promoted") for p in layout.next_ca(domain) if p.exists()]
    # Leaves first, then the CA files: a crash in between leaves the old CA issuing and the
    # re-issue is simply done again.
    leaves = plan_leaves(config, layout, cas, force=False, now=now, domains=tuple(domains))
    due = now + config.tls_refresh_interval + margin(config)
    actions = leaves + actions + [_state_write(layout, {**state, "phase": "reissued", "due": _iso(due)})]
    return Step(state["kind"], "reissued", f"leaves of {', '.join(domains)} re-issued from the new CA; the old CA key is gone",
                actions, due, f"servers to reload the new certificates (until {_iso(due)})")


# Temporal loads its PostgreSQL client certificate once, at start: PostgreSQL may stop trusting the
# old database CA only after the server restarted with the re-issued certificate.
RESTART_NOTE = ("a restart of the temporal server (it keeps the PostgreSQL client certificate it started with); "
                "then run rotate again to drop the old CA from PostgreSQL's trust")


def _drop_old_ca(config, layout, state, only: tuple[str, ...] | None = None) -> Step:
    domains = [d for d in _state_domains(state) if only is None or d in only]
    on_postgres = config.persistence.driver == "postgres"
    deferred = [d for d in domains if d == "database" and only is None and on_postgres]
    actions: list[Action] = []
    for domain in domains:
        if domain in deferred:
            continue
        issuing = load_ca(layout, domain)
        actions += [_trust_write(path, [issuing.cert], f"trust the new {domain} CA only") for path in layout.trust_files(domain)]
    if deferred:
        actions.append(_state_write(layout, {**state, "phase": "restart-pending", "due": _iso(pki.utcnow())}))
        return Step(state["kind"], "restart-pending", "old CA dropped except from PostgreSQL's trust", actions,
                    None, RESTART_NOTE)
    actions += _state_delete(layout, state["kind"])
    return Step(state["kind"], "done", "old CA dropped from the trust bundle", actions)
