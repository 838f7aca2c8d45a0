"""The verify Job export-helm ships (Kubernetes): what it mounts holds no private
key of any CA and not the signing key, the pod passes strict validation, and which listeners it
must reach (or must NOT) follows from the rendered Services and NetworkPolicies, not from a list."""

from __future__ import annotations

import copy

import kubernetes_validate
import pytest
import yaml
from hypothesis import given, settings, strategies as st

from bootstrap.core import verify_plan
from bootstrap.core.security_model import LISTENERS
from bootstrap.core.verify_plan import least_role, parse_route, policy_admits
from bootstrap.errors import BundleError
from bootstrap.ops.export_helm import VERIFY_COMPONENT, bundle_labels, chart_service, names, verify_routes
from tests.support.exports import KUBERNETES_VERSION, private_keys_in, public_bytes, secrets_of

INTERNODE = [l.name for l in LISTENERS if l.admits == "internode"]


def _docs(dest, name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((dest / "manifests" / name).read_text()) if d]


def _job(dest) -> dict:
    return next(d for d in _docs(dest, "verify-job.yaml") if d["kind"] == "Job")


def _routes(job: dict) -> dict[str, tuple[str, str]]:
    """listener -> (option, HOST:PORT) from the Job's args."""
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    return {args[i + 1].split("=", 1)[0]: (args[i], args[i + 1].split("=", 1)[1])
            for i in range(len(args)) if args[i] in ("--listener-host", "--listener-blocked")}


def _manifests(dest) -> list[dict]:
    return [d for path in sorted((dest / "manifests").glob("*.yaml")) if path.name != "verify-job.yaml"
            for d in yaml.safe_load_all(path.read_text()) if d]


def _mounted_secrets(job: dict) -> list[str]:
    volume = next(v for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == "bundle")
    return [source["secret"]["name"] for source in volume["projected"]["sources"]]


def test_the_job_passes_strict_validation(exported):
    for doc in _docs(exported, "verify-job.yaml"):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_what_the_job_mounts_holds_no_ca_key_and_not_the_signing_key(exported, bundle):
    layout, job = bundle.layout, _job(exported)
    forbidden = {public_bytes(k) for k in _bundle_private_keys(layout)}
    secrets = secrets_of(exported)
    mounted = _mounted_secrets(job)
    own = names(bundle.config)["verify"]
    assert own in mounted
    assert all(private_keys_in(value) == [] for value in secrets[own].values())  # CA certificates only
    for name in mounted:
        for value in secrets[name].values():
            assert not {public_bytes(k) for k in private_keys_in(value)} & forbidden, name


def _bundle_private_keys(layout) -> list:
    from bootstrap.core import pki
    paths = [*layout.private.glob("ca*.key"), *layout.signing_keys.glob("*.key")]
    assert len(paths) >= 5, paths  # the four trust domains' CAs and at least one signing key
    return [pki.load_private_key(p.read_bytes(), str(p)) for p in paths]


def test_the_job_presents_the_least_role_never_a_system_one(exported, bundle):
    role = least_role(bundle.config)
    assert role and role != "system"
    assert _mounted_secrets(_job(exported)) == [names(bundle.config)["verify"], f"{names(bundle.config)['role']}-{role}"]


def test_the_job_must_reach_the_frontend_and_must_not_reach_any_internode_port(exported, bundle):
    routes = _routes(_job(exported))
    release = bundle.config.kubernetes.release
    assert routes["frontend gRPC"] == ("--listener-host", f"{chart_service(release, 'frontend')}:{bundle.config.network.frontend_port}")
    assert routes["frontend HTTP API"][0] == "--listener-host"
    assert {name: routes[name][0] for name in INTERNODE} == {name: "--listener-blocked" for name in INTERNODE}
    # The JWKS and the UI gate admit named pods only; the codec server takes every pod's call.
    assert routes["JWKS"][0] == routes["UI gate (gRPC)"][0] == "--listener-blocked"
    assert routes["codec server"][0] == "--listener-host"
    assert not {"PostgreSQL", "Web UI", "metrics", "Prometheus"} & set(routes)  # not run by the export


def test_the_frontend_route_is_where_the_registration_job_calls_it(exported):
    registrar = next(d for d in _docs(exported, "register-namespaces-job.yaml") if d["kind"] == "Job")
    args = registrar["spec"]["template"]["spec"]["containers"][0]["args"]
    assert _routes(_job(exported))["frontend gRPC"][1] == args[args.index("--address") + 1]


def test_each_route_of_our_own_services_is_a_rendered_service(exported):
    services = {d["metadata"]["name"]: {p["port"] for p in d["spec"]["ports"]}
                for d in _manifests(exported) if d["kind"] == "Service"}
    for name, (_, where) in _routes(_job(exported)).items():
        listener = next(l for l in LISTENERS if l.name == name)
        host, port = where.rsplit(":", 1)
        if listener.service != "temporal":
            assert int(port) in services[host], name


def test_every_route_parses_with_verifys_own_parser(exported):
    for name, (option, where) in _routes(_job(exported)).items():
        assert parse_route(f"{name}={where}", option == "--listener-host")[0] == name


def test_reachability_follows_the_policies(exported, bundle):
    """Drop the frontend's NetworkPolicy and its membership port becomes reachable for the Job;
    admit the Job's pod at the JWKS and the JWKS becomes reachable: nothing is typed by hand."""
    docs = _manifests(exported)
    release = bundle.config.kubernetes.release
    before = {r["listener"]: r["reachable"] for r in verify_routes(bundle.config, docs)}
    assert before == {name: option == "--listener-host" for name, (option, _) in _routes(_job(exported)).items()}
    open_frontend = [d for d in docs if not (d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == f"{release}-frontend")]
    after = {r["listener"]: r["reachable"] for r in verify_routes(bundle.config, open_frontend)}
    assert not before["frontend membership"] and after["frontend membership"]
    assert after["history"] is False
    with_verify = copy.deepcopy(docs)
    jwks = next(d for d in with_verify if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == f"{release}-jwks")
    jwks["spec"]["ingress"][0]["from"].append({"podSelector": {"matchLabels": bundle_labels(release, VERIFY_COMPONENT)}})
    assert {r["listener"]: r["reachable"] for r in verify_routes(bundle.config, with_verify)}["JWKS"]


# --------------------------------------------------------------------------- policy_admits itself

A, B = {"app": "a"}, {"app": "b"}


def _policy(target: dict, ingress: list | None, namespace: str = "ns") -> dict:
    spec = {"podSelector": {"matchLabels": target}, "policyTypes": ["Ingress"]}
    if ingress is not None:
        spec["ingress"] = ingress
    return {"kind": "NetworkPolicy", "metadata": {"namespace": namespace}, "spec": spec}


def test_an_unselected_pod_takes_everything_and_a_selected_one_only_what_a_rule_allows():
    assert policy_admits([], A, 80, B)
    assert policy_admits([_policy(B, [])], A, 80, B)
    assert not policy_admits([_policy(A, None)], A, 80, B)  # selected, no rule: nothing
    assert policy_admits([_policy(A, [{}])], A, 80, B)  # an empty rule: everything
    rule = {"from": [{"podSelector": {"matchLabels": B}}], "ports": [{"port": 80, "protocol": "TCP"}]}
    assert policy_admits([_policy(A, [rule])], A, 80, B)
    assert not policy_admits([_policy(A, [rule])], A, 81, B)
    assert not policy_admits([_policy(A, [rule])], A, 80, {"app": "c"})
    assert not policy_admits([_policy(A, [{"ports": [{"port": 80, "protocol": "UDP"}]}])], A, 80, B)
    assert policy_admits([_policy(A, [{"ports": [{"port": 80, "endPort": 90}]}])], A, 85, B)


def test_namespace_selectors_and_expressions():
    everywhere = {"from": [{"namespaceSelector": {}}]}
    assert policy_admits([_policy(A, [everywhere])], A, 80, B)
    other_ns = {"from": [{"namespaceSelector": {"matchLabels": {verify_plan.NAMESPACE_LABEL: "other"}}}]}
    assert not policy_admits([_policy(A, [other_ns])], A, 80, B)
    expression = {"from": [{"podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["b"]}]}}]}
    assert policy_admits([_policy(A, [expression])], A, 80, B)
    assert not policy_admits([_policy(A, [expression])], A, 80, {"app": "c"})


@pytest.mark.parametrize("rule", [
    {"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]},
    {"ports": [{"port": "https"}]},
    {"from": [{"podSelector": {"matchExpressions": [{"key": "app", "operator": "Gt", "values": ["1"]}]}}]},
])
def test_what_it_cannot_judge_is_an_error_not_a_guess(rule):
    with pytest.raises(BundleError):
        policy_admits([_policy(A, [rule])], A, 80, B)


@settings(max_examples=200)
@given(st.text(max_size=60))
def test_parse_route_takes_a_listener_and_a_host_or_one_error(text):
    try:
        name, route = parse_route(text, True)
    except BundleError as exc:
        assert str(exc).startswith("route ")
        return
    assert name in {l.name for l in LISTENERS} and route.host
    assert route.port is None or 0 < route.port < 65536


@pytest.mark.parametrize("text", ["frontend gRPC", "nope=host", "frontend gRPC=", "frontend gRPC=h:0",
                                  "frontend gRPC=h:99999", "frontend gRPC=h:x"])
def test_bad_routes_are_refused(text):
    with pytest.raises(BundleError):
        parse_route(text, True)
