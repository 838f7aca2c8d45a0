"""The trust-domain attack matrix of the docker tier: every credential the bundle issues plus forged
and expired ones, probed against a compose stack's listeners from a container on one of its
networks (tests/support/attack_probe.py), each pair's outcome checked against the security model."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from cryptography import x509

from bootstrap.core.pki import CA, utcnow
from bootstrap.core.security_model import Listener, tls_admits
from bootstrap.core.verify_plan import probe_mode
from bootstrap.ops.plan import DOMAINS, leaf_specs
from bootstrap.store import Layout
from tests.support.compose_stack import ComposeStack, run
from tests.support.paths import REPO


BUNDLE = Path("/bundle")  # where the attacker mounts the bundle volumes (as the services do)


FORGED = Path("/attack")  # the test's own certificates and plans, read-only


# Every bundle volume but private/ and private/jwt (the CA and JWT signing keys: whoever holds
# those needs no trust-domain mistake), so the attacker holds every issued key and token.
ATTACKER_VOLUMES = ("root", "trust", "server", "dbclient", "postgres", "jwks", "ui", "ui-gate", "dex", "grafana", "clients",
                    "tokens", "config", "codec", "codec-keys", "registrar", "tools")


MAX_PAIRS = 1000  # bounds the matrix in count; the probe's deadline bounds it in time


MATRIX_DEADLINE_S = 420


UNREACHABLE_REACH = ("container", "backend", "monitoring")


@dataclass(frozen=True)
class Credential:
    name: str
    domain: str  # a trust domain of DOMAINS, "foreign", or "none"
    usage: str  # "server", "client", "both", or "" (none)
    expired: bool = False
    cert: str | None = None  # path inside the attacker's container
    key: str | None = None

    def passes(self, admits: str) -> bool:
        """What a listener that admits `admits` must do with this credential at the TLS layer."""
        return tls_admits(admits, self.domain, self.usage, self.expired)


def expected(listener: Listener, credential: Credential, reachable: bool = False) -> str:
    if listener.reach in UNREACHABLE_REACH and not reachable:
        return "unreachable"
    if listener.admits == "plaintext":
        return "plaintext-http"
    return "admitted" if credential.passes(listener.admits) else "refused"


def server_identity(listener: Listener, config) -> tuple[str, str]:
    """(roots, server name) the listener's server certificate is verified with: internode
    listeners present the internode cert (internode CA), every other one a server-domain cert."""
    net = config.network
    if listener.admits == "internode":
        return str(BUNDLE / "trust" / "internode" / "ca.pem"), net.internode_server_name
    host = net.frontend_host if listener.service == "temporal" else listener.service
    return str(BUNDLE / "trust" / "ca.pem"), host


def forge_credentials(stack: ComposeStack, config, workdir: Path) -> list[Credential]:
    """A foreign CA's cert and an expired cert from each domain's CA, written to workdir."""
    net = config.network
    layout = Layout(Path("."))
    ca_files = stack.read_bundle_files(*(str(p) for d in DOMAINS for p in layout.domain_ca(d)))
    forged: list[Credential] = []

    def write(name: str, leaf, domain: str, usage: str, expired: bool) -> None:
        (workdir / f"{name}.pem").write_bytes(leaf.cert_pem())
        key = workdir / f"{name}.key"
        key.write_bytes(leaf.key_pem())
        key.chmod(0o600)
        forged.append(Credential(name, domain, usage, expired, str(FORGED / f"{name}.pem"), str(FORGED / f"{name}.key")))

    # A foreign CA's cert that copies the names of the most powerful identities: the system role's
    # CN and the internode SAN, usable as client and server.
    foreign = CA.create("Temporal Bundle CA", organization="Temporal Bundle")
    write("foreign-ca", foreign.issue_cert(net.internode_server_name, common_name="temporal-bundle:system",
                                           usage="both"), "foreign", "both", False)
    now = utcnow()
    specs = {}
    for domain in DOMAINS:
        usage = "both" if domain == "internode" else "client"
        sans = (net.internode_server_name,) if domain == "internode" else ()
        common_name = {"client": "temporal-bundle:system", "internode": net.internode_server_name,
                       "database": config.persistence.user, "server": "temporal-bundle:system"}[domain]
        specs[domain] = {"sans": sans, "common_name": common_name, "usage": usage}
    if stack.keys_backend == "pkcs11":
        leaves = expired_leaves_signed_in_the_token(stack, specs)
    else:
        leaves = {}
        for domain, spec in specs.items():
            ca = CA.from_pem(*(ca_files[str(p)] for p in layout.domain_ca(domain)))
            leaf = ca.issue_cert(*spec["sans"], common_name=spec["common_name"], usage=spec["usage"],
                                 now=now - timedelta(days=3), lifetime=timedelta(days=1))
            leaves[domain] = (leaf.cert_pem(), leaf.key_pem())
    for domain, (cert_pem, key_pem) in leaves.items():
        leaf = Leaf(cert_pem, key_pem)
        assert x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc < now
        write(f"expired-{domain}", leaf, domain, specs[domain]["usage"], True)
    return forged


@dataclass
class Leaf:
    _cert: bytes
    _key: bytes

    def cert_pem(self) -> bytes:
        return self._cert

    def key_pem(self) -> bytes:
        return self._key


# keys.backend pkcs11: the CA keys sign only inside the token, so the expired certificates are
# issued in the bootstrap container (the token's user), as the bundle's own code issues leaves.
SIGN_IN_TOKEN = r"""
import base64, json, sys
from datetime import timedelta
from pathlib import Path
from bootstrap.core import backend
from bootstrap.core.config import load_config
from bootstrap.core.verify_plan import probe_mode
from bootstrap.core.pki import CA, utcnow
from bootstrap.store import Layout
backend.activate(load_config(Path("/etc/temporal-bundle/bundle.yaml")))
layout, now, out = Layout(Path("/bundle")), utcnow(), {}
for domain, spec in json.loads(sys.argv[1]).items():
    cert, key = layout.domain_ca(domain)
    ca = CA.from_pem(cert.read_bytes(), key.read_bytes())
    leaf = ca.issue_cert(*spec["sans"], common_name=spec["common_name"], usage=spec["usage"],
                         now=now - timedelta(days=3), lifetime=timedelta(days=1))
    out[domain] = [base64.b64encode(leaf.cert_pem()).decode(), base64.b64encode(leaf.key_pem()).decode()]
print(json.dumps(out))
"""


def expired_leaves_signed_in_the_token(stack: ComposeStack, specs: dict) -> dict:
    import base64

    # As root, like the bootstrap (private/ is root's), then the token files back to their owner,
    # as the image's entrypoint does after every command (SoftHSM2 leaves lock files behind).
    result = stack.compose("run", "--rm", "--no-deps", "-T", "--entrypoint", "sh", "bootstrap", "-c",
                           'python3 -c "$1" "$2"; rc=$?; chown -R 10001:10001 /var/lib/softhsm/tokens; exit $rc',
                           "sh", SIGN_IN_TOKEN, json.dumps(specs))
    out = json.loads(result.stdout.strip().splitlines()[-1])
    return {d: (base64.b64decode(c), base64.b64decode(k)) for d, (c, k) in out.items()}


def all_credentials(stack: ComposeStack, config, workdir: Path) -> list[Credential]:
    layout = Layout(BUNDLE)
    issued = []
    for spec in leaf_specs(config):
        cert, key = layout.leaf(spec.directory, spec.name)
        issued.append(Credential(f"{spec.directory}/{spec.name}", spec.domain, spec.usage, False, str(cert), str(key)))
    return [*issued, *forge_credentials(stack, config, workdir), Credential("no-certificate", "none", "")]


def run_attacker(stack: ComposeStack, workdir: Path, command: str, plan: dict, timeout: float,
                 network: str | None = None) -> dict:
    """tests/support/attack_probe.py in the bundle image, on the edge network only (`network`: another
    docker network for the controls, e.g. container:ID for a service's own loopback)."""
    plan_name = f"{command}-{len(list(workdir.glob('*.json')))}.json"
    (workdir / plan_name).write_text(json.dumps(plan))
    volumes = []
    for d in ATTACKER_VOLUMES:
        target = {"root": BUNDLE, "tools": Path("/opt/bundle-tools")}.get(d, BUNDLE / d)  # as the services mount them
        volumes += ["-v", f"{stack.volume('bundle-' + d)}:{target}:ro"]
    argv = [
        "docker", "run", "--rm", "--network", network or stack.network("edge"), "--read-only", "--tmpfs", "/tmp",
        # Root with DAC_OVERRIDE only: every service's 0600 key is readable, nothing else allowed.
        "--user", "0:0", "--cap-drop", "ALL", "--cap-add", "DAC_OVERRIDE", "--security-opt", "no-new-privileges:true",
        *volumes, "-v", f"{workdir}:{FORGED}:ro",
        "-v", f"{REPO / 'tests'}:/opt/e2e/tests:ro", "--workdir", "/opt/e2e",
        stack.images["BUNDLE_IMAGE"], "python3", "-m", "tests.support.attack_probe", command, str(FORGED / plan_name),
    ]
    result = run(argv, timeout=timeout, check=False)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, f"attack_probe {command} printed no result (exit {result.returncode})\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return json.loads(lines[-1])["results"]


def run_matrix(stack: ComposeStack, config, workdir: Path, listeners, credentials: list[Credential], *,
               host_of=lambda listener: listener.service, network: str | None = None, reachable: bool = False):
    """Every listener x every credential, probed from `network` (default: edge); prints every pair's
    outcome and returns (pairs tried, wrong pairs)."""
    net = config.network
    probes, wanted = [], {}
    for listener in listeners:
        roots, server_name = server_identity(listener, config)
        for credential in credentials:
            pair = f"{listener.name} <- {credential.name}"
            probes.append({
                "id": pair, "host": host_of(listener), "port": listener.port_number(net, config.oidc), "mode": probe_mode(listener),
                "verify_ca": roots, "server_name": server_name, "cert": credential.cert, "key": credential.key,
                "db_user": config.persistence.user,
            })
            wanted[pair] = expected(listener, credential, reachable=reachable)
    assert len(probes) <= MAX_PAIRS
    started = time.monotonic()
    results = run_attacker(stack, workdir, "matrix", {"probes": probes, "deadline_s": MATRIX_DEADLINE_S,
                                                      "max_pairs": MAX_PAIRS}, timeout=MATRIX_DEADLINE_S + 120,
                           network=network)
    wrong, admitted = [], []
    for pair, want in wanted.items():
        got = results.get(pair, "not tried: no result")
        verdict = got.split(":", 1)[0]
        if verdict != want:
            wrong.append(f"{pair}: expected {want}, got {got}")
        if verdict == "admitted":
            admitted.append(pair)
    tried = sum(1 for pair in wanted if not results.get(pair, "not tried").startswith("not tried"))
    print(f"\n{tried} pairs tried of {len(wanted)} ({len(listeners)} listeners x {len(credentials)} credentials) "
          f"from {network or stack.network('edge')}: {len(wrong)} wrong, {time.monotonic() - started:.0f}s")
    print("admitted: " + "; ".join(admitted))
    for pair in wanted:
        print(f"  {pair}: {results.get(pair)} ({results.get(pair + '#s')}s)")
    assert tried == len(wanted), f"only {tried} of {len(wanted)} pairs tried in time"
    # Every TLS listener that admits a trust domain must have been offered certs it takes and
    # certs it refuses, or the matrix proves nothing about it.
    for listener in listeners:
        if listener.admits not in ("any", "plaintext") and (reachable or listener.reach not in UNREACHABLE_REACH):
            outcomes = {wanted[f"{listener.name} <- {c.name}"] for c in credentials}
            assert outcomes == {"admitted", "refused"}, (listener.name, outcomes)
    return tried, wrong
