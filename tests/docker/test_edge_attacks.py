"""The trust-domain attack matrix on the real engine, from the attacker's side.

An attacker's container joins the compose `edge` network only (the application network: where
applications, the UI and anything compromised on it sit) and holds EVERY credential the bundle
issues: each leaf of leaf_specs (role, UI, health, registrar, database and internode client certs,
and the server certs used as client certs), a certificate from a foreign CA, expired certificates
from each domain's own CA (issued here with the CA key, which only the bootstrap's volume holds)
and no certificate at all. It tries every listener of bootstrap.core.security_model.LISTENERS with
every one of them. What must happen comes from LISTENERS alone:

    reach container/backend/monitoring  not reachable from edge (refused / no route / no name)
    reach published/edge     reachable; TLS admits exactly the non-expired client certificates of
                             the listener's `admits` domain ("any": TLS, no client cert asked;
                             "plaintext": HTTP)

The probe verifies each server with the roots it really presents (trust/ca.pem for server-domain
listeners, trust/internode/ca.pem for internode ones), so a refusal is the server's, never a
failed check on our side. Any pair wrongly admitted or wrongly refused fails.

Then: the internal-frontend (system admin without a token for whoever it admits) cannot be used
from edge to register a namespace, and the frontend refuses `temporal operator namespace create`
with the internode certificate and no token.

Reuses the docker tier's one stack (conftest.py); never starts another.
"""

from __future__ import annotations

import json
import time

import pytest

from bootstrap.core.config import load_config
from bootstrap.ops.plan import DOMAINS, leaf_specs
from bootstrap.core.security_model import LISTENERS, Listener

from tests.support.compose_stack import GRAFANA_ABSENT, TIMINGS, ComposeStack, grafana_image
from tests.support.edge_attacks import BUNDLE, Credential, all_credentials, run_attacker, run_matrix

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1200)]

# The shared stack runs with the compose profile monitoring only: the token exchange (profile
# workload-identity) is attacked against the real server by tests/server/test_workload_identity.py.
STACK_PROFILES = ("monitoring",)
STACK_LISTENERS = tuple(listener for listener in LISTENERS if listener.profile in ("", *STACK_PROFILES))


@pytest.fixture(scope="module")
def attacker(running_stack, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("attacker")
    workdir.chmod(0o755)
    config = load_config(running_stack.config)
    return running_stack, config, workdir


@pytest.fixture(scope="module")
def credentials(attacker) -> list[Credential]:
    stack, config, workdir = attacker
    creds = all_credentials(stack, config, workdir)
    assert len(creds) == len(leaf_specs(config)) + 1 + len(DOMAINS) + 1
    return creds


def test_services_sit_on_the_networks_the_matrix_assumes(attacker):
    stack, _, _ = attacker
    # temporal on edge and backend, JWKS and PostgreSQL on backend only: what makes a "backend"
    # listener unreachable from edge. (The attacker's `docker run --network` attaches edge only.)
    networks = {s: set(stack.inspect(s)["NetworkSettings"]["Networks"]) for s in ("temporal", "jwks", "postgresql")}
    assert networks["temporal"] == {stack.network("edge"), stack.network("backend"), stack.network("monitoring")}, networks
    assert networks["jwks"] == networks["postgresql"] == {stack.network("backend")}, networks


def running_listeners(stack: ComposeStack) -> tuple[Listener, ...]:
    """STACK_LISTENERS less Grafana's when the stack runs without it (its image is not on this
    engine: conftest.py), which is then said plainly, never passed over in silence."""
    if GRAFANA_ABSENT not in stack.compose_files:
        return STACK_LISTENERS
    print(f"\nGrafana image {grafana_image()} not available here: its listener is NOT attacked in this run")
    return tuple(listener for listener in STACK_LISTENERS if listener.service != "grafana")


def test_every_listener_admits_exactly_its_trust_domain_from_edge(attacker, credentials):
    stack, config, workdir = attacker
    started = time.monotonic()
    listeners = running_listeners(stack)
    assert any(listener.service == "grafana" for listener in STACK_LISTENERS)
    tried, wrong = run_matrix(stack, config, workdir, listeners, credentials)
    TIMINGS["attack_matrix_s"] = time.monotonic() - started
    print(f"trust-domain attack matrix from edge: {tried} pairs tried, {len(wrong)} wrong")
    assert not wrong, f"{len(wrong)} of {tried} pairs wrong:\n" + "\n".join(wrong)


def test_listeners_out_of_reach_are_up_and_admit_exactly_their_domain_where_they_listen(attacker, credentials):
    """Control for the edge matrix: "unreachable" must mean bound out of reach, not down. The
    container-only listeners are probed on the temporal container's own loopback (sharing its
    network namespace), the backend ones from the backend network; the same expectations hold
    there, as if reachable."""
    stack, config, workdir = attacker
    temporal = stack.container_id("temporal")
    local = [l for l in STACK_LISTENERS if l.reach == "container"]
    backend = [l for l in STACK_LISTENERS if l.reach == "backend"]
    assert {l.service for l in local} == {"temporal"}, "a container-only listener outside the temporal container"
    tried_local, wrong_local = run_matrix(stack, config, workdir, local, credentials, host_of=lambda _: "127.0.0.1",
                                          network=f"container:{temporal}", reachable=True)
    tried_backend, wrong_backend = run_matrix(stack, config, workdir, backend, credentials,
                                              network=stack.network("backend"), reachable=True)
    print(f"control: {tried_local + tried_backend} pairs tried, {len(wrong_local) + len(wrong_backend)} wrong")
    wrong = wrong_local + wrong_backend
    assert not wrong, f"{len(wrong)} pairs wrong:\n" + "\n".join(wrong)


def _cli(address: str, namespace: str, cert: str, ca: str, server_name: str, *extra: str) -> list[str]:
    return [
        "temporal", "operator", "namespace", *extra, "--namespace", namespace, "--address", address,
        "--tls-cert-path", f"{cert}.pem", "--tls-key-path", f"{cert}.key", "--tls-ca-path", ca,
        "--tls-server-name", server_name, "--command-timeout", "15s",
    ]


def test_no_namespace_can_be_registered_without_a_token_from_edge(attacker):
    stack, config, workdir = attacker
    net = config.network
    frontend = f"{net.frontend_host}:{net.frontend_port}"
    internal = f"{net.frontend_host}:{net.internal_frontend_port}"
    internode, internode_ca = str(BUNDLE / "server" / "internode"), str(BUNDLE / "trust" / "internode" / "ca.pem")
    server_ca = str(BUNDLE / "trust" / "ca.pem")
    registrar = str(BUNDLE / "registrar" / "system")
    token = str(BUNDLE / "registrar" / "system.jwt")
    attempts = [
        # The internal-frontend would make the internode cert a system admin without a token:
        # from edge it must not even accept the connection.
        {"id": "internal-frontend", "argv": _cli(internal, "attack-internal", internode, internode_ca,
                                                 net.internode_server_name, "create")},
        # The frontend, with the internode cert (valid, but another trust domain) and no token.
        {"id": "frontend-internode", "argv": _cli(frontend, "attack-frontend", internode, server_ca,
                                                  net.frontend_host, "create")},
        # Control for the checks below: the registrar's system cert and token see namespaces.
        {"id": "describe-default", "argv": _cli(frontend, "default", registrar, server_ca, net.frontend_host, "describe"),
         "token_file": token},
        {"id": "describe-attack-internal", "argv": _cli(frontend, "attack-internal", registrar, server_ca,
                                                        net.frontend_host, "describe"), "token_file": token},
        {"id": "describe-attack-frontend", "argv": _cli(frontend, "attack-frontend", registrar, server_ca,
                                                        net.frontend_host, "describe"), "token_file": token},
    ]
    results = run_attacker(stack, workdir, "namespaces", {"attempts": attempts}, timeout=400)
    print("\n" + json.dumps(results, indent=1))
    internal_result = results["internal-frontend"]
    assert internal_result["exit"] not in (0, None), internal_result
    assert "connection refused" in internal_result["output"].lower(), internal_result
    frontend_result = results["frontend-internode"]
    assert frontend_result["exit"] not in (0, None), frontend_result
    out = frontend_result["output"].lower()
    assert "connection refused" not in out and "certificate" in out, frontend_result  # the TLS layer refused it
    assert results["describe-default"]["exit"] == 0, results["describe-default"]
    for namespace in ("attack-internal", "attack-frontend"):
        described = results[f"describe-{namespace}"]
        assert described["exit"] != 0 and "not found" in described["output"].lower(), described
