"""export-helm: valid manifests, chart key paths, a server config the server accepts, Secrets that
hold only what their consumer needs, deterministic output, and bad input refused."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from bootstrap.core import pki
from bootstrap.core.tls_guard import tls_problems
from bootstrap.commands.export_helm import GENERATED
from bootstrap.ops.export_helm import chart_service
from bootstrap.ops.render import render_all
from tests.support import chart
from tests.support.bundles import make_bundle, run_main, snapshot
from tests.support.exports import KUBERNETES_VERSION, configcheck, documents, export, private_keys_in, public_bytes, read_tree, secrets_of


def test_every_manifest_and_secret_passes_strict_validation(exported):
    docs = documents(exported)
    kinds = {d["kind"] for _, d in docs}
    assert {"Secret", "Deployment", "Service", "Job", "NetworkPolicy", "ConfigMap"} <= kinds
    for name, doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)  # raises on any error
        if doc["kind"] == "Namespace":
            assert doc["metadata"]["name"] == "temporal-prod", name
        else:
            assert doc["metadata"]["namespace"] == "temporal-prod", name


def test_the_namespace_enforces_pod_security_restricted(exported):
    namespaces = [doc for _, doc in documents(exported) if doc["kind"] == "Namespace"]
    assert [(n["metadata"]["name"], n["metadata"]["labels"]) for n in namespaces] == [("temporal-prod", {
        f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn", "audit")})]
    assert (exported / "namespace.yaml").exists() and not list(exported.glob("manifests/namespace*"))


def test_the_kubernetes_validate_command_passes_every_file(exported):
    files = sorted(str(p) for p in exported.rglob("*.yaml") if p.name != "values.yaml")
    result = subprocess.run(["kubernetes-validate", "--strict", "-k", KUBERNETES_VERSION, *files], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" passed ") == len(documents(exported))


def test_strict_validation_rejects_an_unknown_field(exported):
    # The validator must be able to fail: an unknown container field is an error under --strict.
    _, deployment = next((n, d) for n, d in documents(exported) if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_workloads_are_non_root_read_only_with_requests_and_probes(exported):
    for name, doc in documents(exported):
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        spec = doc["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        for container in spec["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
            assert container["resources"]["requests"], name
            if doc["kind"] == "Deployment":
                assert "readinessProbe" in container and "livenessProbe" in container, name


def test_every_pod_of_the_chart_runs_as_an_account_that_mounts_no_api_token(exported, values):
    assert values["serviceAccount"] == {"create": False, "name": "temporal-bundle-chart-pods"}
    accounts = [(path, doc["automountServiceAccountToken"]) for path, doc in documents(exported)
                if doc["kind"] == "ServiceAccount" and doc["metadata"]["name"] == values["serviceAccount"]["name"]]
    assert accounts == [("manifests/chart-service-account.yaml", False)]


def test_every_pod_of_the_chart_gets_what_pod_security_restricted_asks(values):
    """namespace.yaml enforces `restricted`: each pod and container context the chart takes is set
    (the released chart's pods admitted with them: scripts/check-released-chart.py, by hand)."""
    containers = [values["server"][svc]["containerSecurityContext"] for svc in chart.SERVER_SERVICES]
    containers += [values[owner]["containerSecurityContext"] for owner in ("admintools", "web", "schema")]
    for context in containers:
        assert context == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    for owner in ("server", "admintools", "web", "schema"):
        pod = values[owner]["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] == 1000, owner
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, owner


def test_values_name_only_key_paths_of_the_chart(values):
    assert chart.unknown_paths(values) == []
    assert chart.unknown_paths({"server": {"frontend": {"replicas": 2}}}) == ["server.frontend.replicas"]


def test_values_carry_the_bundle(values, bundle):
    server = values["server"]
    assert server["config"]["persistence"]["numHistoryShards"] == 8 == bundle.config.persistence.num_history_shards
    assert [server[s]["replicaCount"] for s in chart.SERVER_SERVICES] == [1, 1, 3, 2, 1]
    assert server["frontend"]["service"]["type"] == "LoadBalancer"
    assert server["internal-frontend"]["enabled"] is True
    tls = server["config"]["tls"]
    assert tls["frontend"]["client"]["serverName"] == bundle.config.network.frontend_host
    assert tls["internode"]["client"]["serverName"] == bundle.config.network.internode_server_name
    # Ours and Dex's (the Web UI's users), read from the claim Dex puts groups in.
    authorization = server["config"]["authorization"]
    assert authorization["jwtKeyProvider"]["keySourceURIs"] == [bundle.config.jwks_url, bundle.config.dex_jwks_url]
    assert (authorization["permissionsClaimName"], authorization["audience"]) == ("groups", "temporal")
    assert server["config"]["clusterMetadata"]["currentClusterName"] == bundle.config.cluster_name


def test_dynamic_config_is_the_compose_one(values, bundle):
    compose = yaml.safe_load(render_all(bundle.config)["dynamic_config.yaml"])
    assert values["server"]["dynamicConfig"] == compose
    assert compose["system.enableRingpopTLS"] == [{"value": True}]


def test_composed_server_config_passes_configcheck(values, tmp_path):
    path = tmp_path / "temporal.yaml"
    composed = chart.server_config(values)
    # Unknown to the strict decoder: exactly the chart's own fixed keys, nothing from our values.
    complaints = [line for line in configcheck(composed, path).stderr.splitlines() if "not found in type" in line]
    assert len(complaints) == len(chart.CHART_FIXED_UNKNOWN), complaints
    config = chart.without_chart_fixed_unknown(composed)
    result = configcheck(config, path)
    assert result.returncode == 0, result.stderr
    # The same checker refuses a misspelt key in the part we pass through.
    config["global"]["tls"]["refreshIntervall"] = "1m"
    assert configcheck(config, path).returncode != 0


def test_values_set_nothing_the_released_chart_lacks(values):
    # server.tls.* exists only on the chart's main branch: chart 1.6.0 would ignore it silently.
    assert "tls" not in values["server"] and "tls" not in values["web"]
    assert chart.unknown_paths({"server": {"tls": {"frontend": {"enabled": True}}}}) == ["server.tls.frontend.enabled"]


def test_the_composed_server_config_serves_mutual_tls_on_its_own(values):
    """What chart 1.6.0 renders from our values: every listener has its certificate and key and
    demands a client certificate, from server.config.tls alone."""
    tls = chart.server_config(values)["global"]["tls"]
    for group in ("frontend", "internode"):
        server = tls[group]["server"]
        assert server["certFile"] and server["keyFile"], group
        assert server["requireClientAuth"] is True and server["clientCaFiles"], group
        assert tls[group]["client"]["rootCaFiles"], group
    assert tls["systemWorker"]["certFile"] and tls["systemWorker"]["keyFile"]
    assert tls_problems(chart.server_config(values)) == []


def test_the_emulated_chart_drops_an_empty_tls_as_the_template_does(values):
    # `with $server.config.tls` writes nothing for an empty map: no global.tls, all plaintext.
    values["server"]["config"]["tls"] = {}
    assert "tls" not in chart.server_config(values)["global"]
    assert tls_problems(chart.server_config(values)) == ["global.tls is missing: every listener would be plaintext"]


def _named_files(tree) -> list[str]:
    """Every path a server config names: values of *File keys and items of *Files lists."""
    found = []
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key.endswith("File") and isinstance(value, str):
                found.append(value)
            elif key.endswith("Files") and isinstance(value, list):
                found += value
            else:
                found += _named_files(value)
    return found


def test_every_path_the_server_config_names_is_a_key_of_a_mounted_secret(values, exported):
    config, mounts, secrets = chart.server_config(values), chart.server_mounts(values), secrets_of(exported)
    named = _named_files(config)
    assert len(named) >= 20  # TLS (three groups) and both datastores' certificates
    for path in named:
        directory, key = path.rsplit("/", 1)
        assert directory in mounts, f"{path}: nothing is mounted at {directory}"
        secret, items = mounts[directory]
        assert secret in secrets, f"{path}: Secret {secret} is not exported"
        assert key in secrets[secret] and (items is None or key in items), f"{path}: {secret} has no key {key}"


def test_the_mount_check_can_fail(values):
    values["server"]["additionalVolumeMounts"] = [m for m in values["server"]["additionalVolumeMounts"]
                                                  if not m["mountPath"].endswith("/frontend")]
    directories = {p.rsplit("/", 1)[0] for p in _named_files(chart.server_config(values))}
    assert not directories <= set(chart.server_mounts(values))


def test_every_file_in_the_server_config_is_in_a_mounted_secret(values, exported, bundle):
    """Each TLS and SQL file the composed config names resolves to a key of the Secret mounted
    there, holding the right trust domain's material."""
    config, mounts, secrets = chart.server_config(values), chart.server_mounts(values), secrets_of(exported)

    def content(path: str) -> bytes:
        directory, key = path.rsplit("/", 1)
        return secrets[mounts[directory][0]][key]

    tls = config["global"]["tls"]
    ca_of = {d: bundle.ca_of(d).cert for d in ("client", "internode")} | {"server": bundle.ca.cert}
    assert _issuers(content, tls["frontend"]["server"]["clientCaFiles"]) == {pki.fingerprint(ca_of["client"])}
    assert _issuers(content, tls["frontend"]["client"]["rootCaFiles"]) == {pki.fingerprint(ca_of["server"])}
    for files in (tls["internode"]["server"]["clientCaFiles"], tls["internode"]["client"]["rootCaFiles"],
                  tls["systemWorker"]["client"]["rootCaFiles"]):
        assert _issuers(content, files) == {pki.fingerprint(ca_of["internode"])}
    for section, leaf in (("frontend", "frontend"), ("internode", "internode")):
        assert content(tls[section]["server"]["certFile"]) == bundle.leaf_paths("server", leaf)[0].read_bytes()
        assert content(tls[section]["server"]["keyFile"]) == bundle.leaf_paths("server", leaf)[1].read_bytes()
    assert content(tls["systemWorker"]["certFile"]) == bundle.leaf_paths("server", "internode")[0].read_bytes()
    for store in config["persistence"]["datastores"].values():
        sql_tls = store["sql"]["tls"]
        cert = pki.load_cert(content(sql_tls["certFile"]), "db client")
        assert pki.signed_by(cert, bundle.ca_of("database").cert)
        assert pki.keys_match(cert, pki.load_private_key(content(sql_tls["keyFile"]), "db key"))
        assert _issuers(content, [sql_tls["caFile"]]) == {pki.fingerprint(ca_of["server"])}


def _issuers(content, files) -> set[str]:
    return {pki.fingerprint(c) for f in files for c in pki.load_certs(content(f), f)}


def test_admintools_get_a_client_cert_and_the_system_token_never_an_internode_key(values, exported, bundle):
    admin = values["admintools"]
    # The frontend, never the internal-frontend the chart would default to.
    assert admin["temporalAddress"].startswith("temporal-frontend:")
    names = {v["secret"]["secretName"] for v in admin["additionalVolumes"]}
    assert len(names) == 1
    secret = secrets_of(exported)[names.pop()]
    cert = pki.load_cert(secret["tls.crt"], "admintools")
    assert pki.signed_by(cert, bundle.ca_of("client").cert)
    assert secret["token"].decode() == bundle.token("system")
    internode = public_bytes(bundle.leaf("server", "internode")[1])
    assert all(public_bytes(k) != internode for k in private_keys_in(b"".join(secret.values())))


def test_no_secret_holds_a_ca_private_key(exported, bundle):
    ca_keys = {public_bytes(pki.load_private_key(p.read_bytes(), p.name)) for p in bundle.layout.private.glob("ca*.key")}
    assert len(ca_keys) >= 4  # one per trust domain
    found = 0
    for name, data in secrets_of(exported).items():
        for value in data.values():
            for key in private_keys_in(value):
                found += 1
                assert public_bytes(key) not in ca_keys, name
    assert found >= 10  # the check looked at real keys


def test_the_key_check_finds_a_ca_key_under_any_name(bundle):
    planted = b"junk\n" + bundle.layout.domain_ca("internode")[1].read_bytes()
    ca_key = public_bytes(bundle.ca_of("internode").key)
    assert [public_bytes(k) for k in private_keys_in(planted)] == [ca_key]


def _signing_keys(bundle) -> set[bytes]:
    return {public_bytes(pki.load_private_key(p.read_bytes(), p.name)) for p in bundle.layout.signing_keys.glob("*.key")}


def _holders_of_signing_keys(dest: Path, signing: set[bytes]) -> set[str]:
    return {name for name, data in secrets_of(dest).items() for value in data.values()
            for key in private_keys_in(value) if public_bytes(key) in signing}


def test_the_signing_key_is_only_in_the_refreshers_secret(exported, bundle):
    assert _holders_of_signing_keys(exported, _signing_keys(bundle)) == {"temporal-bundle-token-refresher"}
    mounts = [d for _, d in documents(exported) if d["kind"] in ("Deployment", "Job")
              and any(v.get("secret", {}).get("secretName") == "temporal-bundle-token-refresher"
                      for v in d["spec"]["template"]["spec"]["volumes"])]
    assert [d["metadata"]["name"] for d in mounts] == ["temporal-token-refresher"]


def test_minting_outside_puts_the_signing_key_in_no_secret(own_bundle, tmp_path):
    own_bundle.config_path.write_text(own_bundle.config_path.read_text() + "  token_minting: outside\n")
    dest = tmp_path / "out"
    assert export(own_bundle, dest).code == 0
    assert _holders_of_signing_keys(dest, _signing_keys(own_bundle)) == set()
    assert not (dest / "manifests/token-refresher.yaml").exists()


def test_switching_to_outside_minting_removes_the_refresher_files(own_bundle, tmp_path):
    dest = tmp_path / "out"
    assert export(own_bundle, dest).code == 0
    assert (dest / "secrets/temporal-bundle-token-refresher.yaml").exists()
    own_bundle.config_path.write_text(own_bundle.config_path.read_text() + "  token_minting: outside\n")
    result = export(own_bundle, dest)
    assert "removed secrets/temporal-bundle-token-refresher.yaml" in result.out
    assert not (dest / "secrets/temporal-bundle-token-refresher.yaml").exists()
    assert not (dest / "manifests/token-refresher.yaml").exists()


def test_ingress_exposure(own_bundle, tmp_path):
    own_bundle.config_path.write_text(own_bundle.config_path.read_text().replace("loadbalancer", "ingress"))
    dest = tmp_path / "out"
    assert export(own_bundle, dest).code == 0
    values = yaml.safe_load((dest / "values.yaml").read_text())
    frontend = values["server"]["frontend"]
    assert frontend["ingress"] == {"enabled": True, "hosts": [own_bundle.config.network.frontend_host]}
    assert frontend["service"]["type"] == "ClusterIP"
    assert chart.unknown_paths(values) == []


def test_export_before_generate_certs_is_one_error_and_nothing_written(tmp_path):
    config = tmp_path / "bundle.yaml"
    config.write_text("namespaces: [{name: default}]\n")
    dest = tmp_path / "out"
    result = run_main("export-helm", "--config", config, "--out", tmp_path / "bundle", "--dest", dest)
    result.assert_one_error("is missing; run generate-certs")
    assert not dest.exists() and not (tmp_path / "bundle").exists()


def test_export_is_deterministic(bundle, exported, tmp_path):
    again = tmp_path / "again"
    assert export(bundle, again).code == 0
    assert read_tree(again) == read_tree(exported)
    before = snapshot(again)
    result = export(bundle, again)
    assert result.code == 0 and "wrote" not in result.out
    assert snapshot(again) == before


def test_every_exported_file_says_it_was_generated(exported):
    # How a re-export tells its own stale files from the operator's.
    assert all(path.read_bytes().startswith(GENERATED) for path in exported.rglob("*.yaml"))


def test_reexport_removes_its_own_stale_files_and_leaves_the_operators_alone(bundle, exported, tmp_path):
    dest = tmp_path / "dest"
    shutil.copytree(exported, dest)
    stale = dest / "secrets" / "temporal-bundle-role-retired.yaml"  # a role since removed
    stale.write_bytes((dest / "values.yaml").read_bytes())
    planted = {dest / "manifests/postgres.yaml": b"apiVersion: v1\nkind: Service\nmetadata: {name: postgresql}\n",
               dest / "secrets/other-app.yaml": b"# not ours\n", dest / "examples/empty.yaml": b""}
    for path, data in planted.items():
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
    (dest / "manifests/kustomize.yaml").mkdir()
    os.mkfifo(dest / "examples/pipe.yaml")  # opening it would wait for a writer
    result = export(bundle, dest)
    assert result.code == 0, result.err
    assert "removed secrets/temporal-bundle-role-retired.yaml: no longer exported" in result.out
    assert not stale.exists()
    assert all(path.read_bytes() == data for path, data in planted.items())
    assert (dest / "manifests/kustomize.yaml").is_dir() and (dest / "examples/pipe.yaml").is_fifo()
    left_alone = [line for line in result.out.splitlines() if line.endswith("not written by export-helm, left alone")]
    assert len(left_alone) == len(planted) + 2, result.out


def test_secret_files_are_private(exported):
    modes = {p.name: p.stat().st_mode & 0o777 for p in (exported / "secrets").glob("*.yaml")}
    assert modes and set(modes.values()) == {0o600}


def test_reexport_after_cert_rotation_changes_only_the_certificate_secrets(own_bundle, tmp_path):
    dest = tmp_path / "out"
    assert export(own_bundle, dest).code == 0
    before = read_tree(dest)
    rotated = own_bundle.run("rotate", "--kind", "certs", "--all")
    assert rotated.code == 0, rotated.err
    assert export(own_bundle, dest).code == 0
    after = read_tree(dest)
    changed = {path for path in after if after[path] != before.get(path)}
    # The UI's OIDC client secret is no certificate, the verify Job's holds CA certificates only: they stay.
    expected = {p for p in before if p.startswith("secrets/") and "token-refresher" not in p and "web-oidc" not in p
                and not p.endswith("-verify.yaml")}
    assert changed == expected
    assert set(after) == set(before)


@pytest.mark.parametrize("section, fragment", [
    ("kubernetes: {replicas: {history: 0}}\n", "replicas: history must be an integer 1..100"),
    ("kubernetes: {replicas: {historyy: 2}}\n", "unknown key 'historyy'"),
    ("kubernetes: {namespace: temporal, storage: fast}\n", "unknown key 'storage'"),
    ("kubernetes: {namespace: default}\n", "namespace 'default' is shared with other workloads"),
    ("kubernetes: {namespace: kube-system}\n", "namespace 'kube-system' is shared with other workloads"),
    ("kubernetes: {namespace: kube-temporal}\n", "namespace 'kube-temporal' is shared with other workloads"),
    (f"kubernetes: {{release: {'r' * 28}}}\n", "is 28 characters; chart 1.6.0 cuts the names it makes from a release over 27"),
    (f"kubernetes: {{release: temporal-{'r' * 28}}}\n", "is 37 characters; chart 1.6.0 cuts the names it makes from a release over 36"),
])
def test_bad_kubernetes_section_is_one_error_and_nothing_written(own_bundle, tmp_path, section, fragment):
    text = own_bundle.config_path.read_text().split("kubernetes:")[0] + section
    own_bundle.config_path.write_text(text)
    dest = tmp_path / "out"
    export(own_bundle, dest).assert_one_error(fragment)
    assert not dest.exists()


# The limit is exact: one character more and the chart cuts internal-frontend-headless.
@pytest.mark.parametrize("release", ["r" * 27, "temporal-" + "r" * 27])
def test_the_longest_release_exported_names_the_charts_services_as_the_chart_does(own_bundle, tmp_path, release):
    text = own_bundle.config_path.read_text().split("kubernetes:")[0] + f"kubernetes: {{release: {release}}}\n"
    own_bundle.config_path.write_text(text)
    dest = tmp_path / "out"
    assert export(own_bundle, dest).code == 0
    components = [c + suffix for c in chart.SERVER_SERVICES for suffix in ("", "-headless")]
    assert all(chart_service(release, c) == chart.component_name(release, c) for c in components)
    assert chart_service(release + "r", "internal-frontend", True) != chart.component_name(release + "r", "internal-frontend-headless")
    exported = " ".join(path.read_text() for path in dest.rglob("*.yaml"))
    assert f"{chart.component_name(release, 'frontend')}:7233" in exported
    assert f"{chart.component_name(release, 'internal-frontend-headless')}:" in exported  # the verify Job's route
    # Ours fit too: a Service's or a Job's name is a DNS label (63), any other a subdomain (253).
    for _, doc in documents(dest):
        limit = 63 if doc["kind"] in ("Service", "Job") else 253
        assert len(doc["metadata"]["name"]) <= limit, doc["metadata"]["name"]


def test_shards_that_differ_from_the_database_are_refused(own_bundle, tmp_path):
    text = own_bundle.config_path.read_text().replace("num_history_shards: 8", "num_history_shards: 512")
    own_bundle.config_path.write_text(text)
    dest = tmp_path / "out"
    export(own_bundle, dest).assert_one_error("num_history_shards is 512", "created with 8")
    assert not dest.exists()


def test_a_sqlite_bundle_is_refused(tmp_path):
    made = make_bundle(tmp_path / "b", f"persistence: {{driver: sqlite, sqlite_path: {tmp_path}/t.db}}\n")
    dest = tmp_path / "out"
    export(made, dest).assert_one_error("persistence.driver postgres")
    assert not dest.exists()


def test_image_overrides_reach_values_and_manifests(own_bundle, tmp_path):
    own_bundle.config_path.write_text(own_bundle.config_path.read_text() + (
        "  images: {server: 'mirror.example.com:5000/temporal/server:1.31.2', bundle: 'mirror.example.com/tb:9'}\n"))
    dest = tmp_path / "out"
    assert export(own_bundle, dest).code == 0
    values = yaml.safe_load((dest / "values.yaml").read_text())
    assert values["server"]["image"] == {"repository": "mirror.example.com:5000/temporal/server", "tag": "1.31.2"}
    assert values["admintools"]["image"]["repository"] == "temporalio/admin-tools"
    images = {c["image"] for _, d in documents(dest) if d["kind"] in ("Deployment", "Job")
              for c in d["spec"]["template"]["spec"]["containers"]}
    assert images == {"mirror.example.com/tb:9", "dexidp/dex:v2.45.1"}
    own_bundle.config_path.write_text(own_bundle.config_path.read_text().replace(
        "bundle: 'mirror.example.com/tb:9'", "bundle: 'mirror.example.com/tb:9', dex: 'mirror.example.com/dex:v2.45.1'"))
    assert export(own_bundle, dest).code == 0
    dex = next(yaml.safe_load_all((dest / "manifests/dex.yaml").read_text()))
    assert dex["spec"]["template"]["spec"]["containers"][0]["image"] == "mirror.example.com/dex:v2.45.1"


def test_default_images_are_the_releases_compose_runs():
    """Moving a compose cluster to Kubernetes must not change (or downgrade) the server release."""
    import re
    from pathlib import Path

    from bootstrap.ops.export_helm import DEFAULT_IMAGES

    compose = (Path(__file__).resolve().parents[2] / "docker-compose.prod.yml").read_text()
    for key, variable in (("server", "TEMPORAL_SERVER_IMAGE"), ("admintools", "TEMPORAL_ADMINTOOLS_IMAGE"),
                          ("ui", "TEMPORAL_UI_IMAGE"), ("dex", "DEX_IMAGE")):
        pinned = re.search(r"\$\{" + variable + r":-([^}]+)\}", compose).group(1)
        assert DEFAULT_IMAGES[key] == pinned, key
