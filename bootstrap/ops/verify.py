"""verify: try every listener of a RUNNING deployment with every credential, and the frontend with
forged and misused tokens, from the outside; report each pair that was wrongly admitted or refused.

The expectations are bootstrap.core.verify_plan's (from security_model.LISTENERS). Credentials:
every certificate the bundle issues (server certificates used as client certificates too), one from
a foreign CA with the names of the most powerful identities, an expired one from each trust
domain's own CA (so it needs the CA keys: verify runs where private/ is mounted; under
keys.backend pkcs11 they sign inside the token), and none. The forged certificates live in a
private temporary directory for the run only, never in the bundle. Tokens are minted with the
bundle's active signing key or forged, in memory; no token and no key is ever printed.

Without keys (the Kubernetes Job, `--without-keys`): no CA key and no signing key is there. The
certificates presented are those found under the bundle directory (a role's), the foreign CA is
made on the spot, the expired certificates are not tried; the role's own token (kept fresh by the
token refresher) is the valid one and the base of the forgeries; the attacks that need the signing
key (SIGNING_KEY_ATTACKS) are reported as not checked, and "wrong namespace" is the role's valid
token on a namespace it names no permission for.

The TLS probes are in verify_probe.py (their outcomes are listed there), the tokens in
verify_tokens.py; this module gathers the credentials and runs the whole matrix into a Report.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from ..core.config import BundleConfig
from ..core.pki import CA, utcnow
from ..core.security_model import LISTENERS
from ..core.verify_plan import (
    SERVER_LEAF, SIGNING_KEY_ATTACKS, TOKEN_ATTACKS, UNREACHABLE, VANTAGES, Credential, Pair, Route, Skipped, deployed,
    plan, role_namespace, token_expectation, unprovable, verdict,
)
from ..errors import BundleError
from ..store import Layout
from .plan import DOMAINS, leaf_specs, load_cas
from .verify_probe import run_pairs
from .verify_tokens import Frontend, attack_tokens, role_attack_tokens, token_outcome

SYSTEM_CN = "temporal-bundle:system"


@dataclass(frozen=True)
class Row:
    listener: str
    credential: str
    expected: str
    got: str

    @property
    def ok(self) -> bool:
        return verdict(self.got) == self.expected

    def as_dict(self) -> dict:
        return {"listener": self.listener, "credential": self.credential, "expected": self.expected, "got": self.got,
                "ok": self.ok}


@dataclass
class Report:
    vantage: str
    rows: list[Row] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    unprovable: list[str] = field(default_factory=list)  # listeners the credentials cannot judge
    seconds: float = 0.0

    @property
    def wrong(self) -> list[Row]:
        return [row for row in self.rows if not row.ok]

    @property
    def passed(self) -> bool:
        return bool(self.rows) and not self.wrong and not self.unprovable

    def as_dict(self) -> dict:
        return {"vantage": self.vantage, "pairs": len(self.rows), "wrong": len(self.wrong), "passed": self.passed,
                "seconds": round(self.seconds, 1), "rows": [r.as_dict() for r in self.rows],
                "skipped": [{"listener": s.listener, "reason": s.reason} for s in self.skipped],
                "unprovable": self.unprovable}


# --------------------------------------------------------------------------- credentials


def issued_credentials(config: BundleConfig, layout: Layout, without_keys: bool = False) -> list[Credential]:
    """Every issued pair; without keys, the pairs that are here (a Job mounts one role's)."""
    out = []
    for spec in leaf_specs(config):
        cert, key = layout.leaf(spec.directory, spec.name)
        if without_keys and not (cert.is_file() and key.is_file()):
            continue
        for path in (cert, key):
            if not path.is_file():
                raise BundleError(f"{path} is missing: verify needs every issued certificate (run init first)")
        out.append(Credential(f"{spec.directory}/{spec.name}", spec.domain, spec.usage, False, str(cert), str(key)))
    return out


def forged_credentials(config: BundleConfig, layout: Layout, workdir: Path, without_keys: bool = False) -> list[Credential]:
    """A foreign CA's certificate copying the system role's CN and the internode name, and (with
    the CA keys) an expired certificate from each domain's own CA; written to workdir (0600 keys)."""
    net = config.network
    foreign = CA.create("Temporal Bundle CA", organization="Temporal Bundle")
    forged = [write_leaf(workdir, "foreign-ca", foreign.issue_cert(net.internode_server_name, common_name=SYSTEM_CN,
                                                                  usage="both"), "foreign", "both")]
    if without_keys:
        return forged
    cas, _ = load_cas(config, layout)
    now = utcnow()
    for domain in DOMAINS:
        usage = "both" if domain == "internode" else "client"
        sans = (net.internode_server_name,) if domain == "internode" else ()
        common_name = {"internode": net.internode_server_name, "database": config.persistence.user}.get(domain, SYSTEM_CN)
        leaf = cas[domain].issue_cert(*sans, common_name=common_name, usage=usage, now=now - timedelta(days=3),
                                      lifetime=timedelta(days=1))
        forged.append(write_leaf(workdir, f"expired-{domain}", leaf, domain, usage, expired=True))
    return forged


def write_leaf(workdir: Path, name: str, leaf, domain: str, usage: str, expired: bool = False) -> Credential:
    cert, key = workdir / f"{name}.pem", workdir / f"{name}.key"
    cert.write_bytes(leaf.cert_pem())
    key.touch(mode=0o600)
    key.write_bytes(leaf.key_pem())
    return Credential(name, domain, usage, expired, str(cert), str(key))


def all_credentials(config: BundleConfig, layout: Layout, workdir: Path, without_keys: bool = False) -> list[Credential]:
    return [*issued_credentials(config, layout, without_keys), *forged_credentials(config, layout, workdir, without_keys),
            Credential("no certificate", "none", "")]


# --------------------------------------------------------------------------- token attacks


def token_rows(frontend: Frontend, tokens: dict[str, str | None], namespace: str, elsewhere: str | None = None) -> list[Row]:
    """Each attack's call on `namespace`; "wrong namespace" on `elsewhere` when given (the role's
    valid token, on a namespace it names no permission for)."""
    attacks = [name for name in TOKEN_ATTACKS if name in tokens]
    where = {name: elsewhere if name == "wrong namespace" and elsewhere else namespace for name in attacks}

    async def all_attacks() -> list[str]:
        return [await token_outcome(frontend, tokens[name], where[name]) for name in attacks]

    outcomes = asyncio.run(all_attacks())
    listener = f"frontend gRPC, namespace {namespace}"
    return [Row(listener, f"token: {name}", token_expectation(name), got) for name, got in zip(attacks, outcomes)]


def frontend_of(pairs: list[Pair], layout: Layout, server_names: dict[str, str], role: str) -> Frontend | None:
    """The frontend gRPC listener where this run probed it, if it must be reachable from here."""
    probe = next((p.probe for p in pairs if p.listener == "frontend gRPC" and p.expected != UNREACHABLE), None)
    if probe is None:
        return None
    cert, key = layout.leaf("clients", role)
    return Frontend(f"{probe.host}:{probe.port}", server_names["temporal"], Path(probe.roots).read_bytes(),
                    cert.read_bytes(), key.read_bytes())


def token_attack_rows(config: BundleConfig, layout: Layout, pairs: list[Pair], server_names: dict[str, str],
                      without_keys: bool) -> tuple[list[Row], list[Skipped]]:
    listener = "frontend gRPC token attacks"
    if not without_keys:
        frontend = frontend_of(pairs, layout, server_names, config.roles[0].name)
        namespace = config.namespaces[0].name if config.namespaces else "default"
        if frontend is None:
            return [], []
        return token_rows(frontend, attack_tokens(config, layout, namespace), namespace), []
    role = next((c.name.removeprefix("clients/") for c in issued_credentials(config, layout, True)
                 if c.name.startswith("clients/") and layout.token(c.name.removeprefix("clients/")).is_file()), None)
    if role is None:
        return [], [Skipped(listener, "no role's certificate and token here")]
    namespace, frontend = role_namespace(config, role), frontend_of(pairs, layout, server_names, role)
    if namespace is None or frontend is None:
        return [], [Skipped(listener, f"role {role} reads no registered namespace, or the frontend is not reachable")]
    tokens = role_attack_tokens(config, layout.token(role).read_text().strip())
    return token_rows(frontend, tokens, namespace, f"verify-not-{namespace}"), [
        Skipped(f"{listener}: {name}", "needs the signing key, which the Job never gets") for name in SIGNING_KEY_ATTACKS]


# --------------------------------------------------------------------------- the whole run


def verify(config: BundleConfig, layout: Layout, vantage_name: str, *, host: str | None = None,
           services: set[str] | None = None, tokens: bool = True, deadline_s: float = 600,
           routes: dict[str, Route] | None = None, without_keys: bool = False) -> Report:
    started = time.monotonic()
    vantage = VANTAGES[vantage_name]
    specs = leaf_specs(config)
    issued = {(spec.directory, spec.name) for spec in specs}
    server_names = {service: spec.common_name for spec in specs for service, leaf in SERVER_LEAF.items()
                    if leaf == (spec.directory, spec.name)}
    roots = {"server": str(layout.trust_files("server")[0]), "internode": str(layout.trust_files("internode")[0])}
    if vantage.routed and services is None:  # every service may run there: its routes decide (plan)
        services = {l.service for l in LISTENERS}
    listeners, skipped = deployed(config, issued, services)
    report = Report(vantage.name, skipped=skipped)
    with tempfile.TemporaryDirectory(prefix="temporal-bundle-verify-") as workdir:
        credentials = all_credentials(config, layout, Path(workdir), without_keys)
        pairs, not_here = plan(config, listeners, credentials, vantage, server_names, roots, host, routes)
        report.skipped += not_here
        outcomes = run_pairs(pairs, deadline_s)
    report.rows = [Row(p.listener, p.credential.name, p.expected, got) for p, got in zip(pairs, outcomes)]
    report.unprovable = unprovable(pairs)
    if without_keys:
        report.skipped.append(Skipped("every TLS listener: expired certificates", "needs the CA keys, which the Job never gets"))
    if tokens:
        rows, not_tried = token_attack_rows(config, layout, pairs, server_names, without_keys)
        report.rows += rows
        report.skipped += not_tried
    report.seconds = time.monotonic() - started
    return report
