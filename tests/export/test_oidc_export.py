"""export-helm and the Web UI's login: the chart's web section gets the UI's client certificate
(chart 1.6.0 has no web.tls) and its OIDC settings, the client secret only by reference to a
Secret; Dex runs from a Secret of its own, or, with an external issuer, not at all. No secret
value appears anywhere but in a Secret."""

from __future__ import annotations

import base64

import kubernetes_validate
import pytest
import yaml

from bootstrap.core import pki
from bootstrap.core.pki import CA
from bootstrap.ops.oidc import admin_hash_path, client_secret_path
from tests.support import chart
from tests.support.bundles import make_bundle
from tests.support.exports import KUBERNETES_VERSION, configcheck, documents, env_of, export, manifest, read_tree, secrets_of, web_mounts


def assert_no_secret_value_outside_secrets(dest, extra: tuple[bytes, ...] = ()) -> None:
    """Every private value a Secret holds (keys, tokens, the client secret, Dex's config), raw or
    base64, appears in no other exported file."""
    outside = {p: data for p, data in read_tree(dest).items() if not p.startswith("secrets/")}
    values = list(extra)
    for name, data in secrets_of(dest).items():
        for key, value in data.items():
            public = value.lstrip().startswith(b"-----BEGIN CERTIFICATE") or key.endswith(("jwks.json", "active"))
            if not public and len(value) >= 16:
                values.append(value)
    assert values
    for value in values:
        for form in (value.strip(), base64.b64encode(value)):
            for path, data in outside.items():
                assert form not in data, f"a Secret's value is in {path}"


# --------------------------------------------------------------------------- embedded Dex


def test_web_gets_its_client_certificate_without_web_tls(values, exported, bundle):
    web = values["web"]
    assert "tls" not in web, "chart 1.6.0 has no web.tls: it would be ignored"
    env, mounts, secrets = env_of(values), web_mounts(values), secrets_of(exported)
    directory = env["TEMPORAL_TLS_CERT"].rsplit("/", 1)[0]
    mounted = secrets[mounts[directory]["secret"]["secretName"]]
    for variable, key in (("TEMPORAL_TLS_CERT", "tls.crt"), ("TEMPORAL_TLS_KEY", "tls.key"), ("TEMPORAL_TLS_CA", "ca.crt")):
        assert env[variable] == f"{directory}/{key}"
    assert mounted["tls.crt"] == bundle.leaf_paths("ui", "client")[0].read_bytes()
    assert mounted["tls.key"] == bundle.leaf_paths("ui", "client")[1].read_bytes()
    # The UI calls the UI gate, whose certificate names both, under the CA the UI trusts.
    host = web["temporalAddress"].rsplit(":", 1)[0]
    assert (host, env["TEMPORAL_TLS_SERVER_NAME"]) == ("ui-gate.temporal-prod.svc", "ui-gate")
    gate_cert = pki.load_cert(bundle.leaf_paths("ui-gate", "server")[0].read_bytes(), "gate")
    assert {host, "ui-gate"} <= set(pki.sans_of(gate_cert))
    assert pki.signed_by(gate_cert, pki.load_cert(mounted["ca.crt"], "web ca"))
    assert env["TEMPORAL_TLS_ENABLE_HOST_VERIFICATION"] == "true"
    assert web["securityContext"]["fsGroup"] == 1000  # the 0440 Secret is readable by the UI's user


def test_web_logs_in_through_dex_with_the_secret_by_reference(values, exported, bundle):
    env, secrets = env_of(values), secrets_of(exported)
    config = bundle.config
    assert env["TEMPORAL_AUTH_ENABLED"] == "true"
    assert env["TEMPORAL_AUTH_PROVIDER_URL"] == env["TEMPORAL_AUTH_ISSUER_URL"] == "https://auth.localhost:5556/dex"
    assert env["TEMPORAL_AUTH_CLIENT_ID"] == config.jwt.audience
    assert env["TEMPORAL_AUTH_CALLBACK_URL"] == "https://localhost:8080/auth/sso/callback"
    assert env["TEMPORAL_AUTH_SCOPES"] == "openid,profile,email,groups,offline_access"
    assert env["TEMPORAL_CODEC_ENDPOINT"] == "https://localhost:8888" and env["TEMPORAL_CODEC_PASS_ACCESS_TOKEN"] == "true"
    kind, name, key = env["TEMPORAL_AUTH_CLIENT_SECRET"]
    secret = client_secret_path(bundle.layout).read_bytes().strip()
    assert secrets[name] == {key: secret}
    # Dex's config, in its own Secret, knows the same client: id, secret and callback.
    dex_files = secrets[f"{config.kubernetes.release}-bundle-dex"]
    dex = yaml.safe_load(dex_files["dex-config.yaml"])
    assert dex["staticClients"][0]["secret"] == secret.decode()
    assert dex["staticClients"][0]["id"] == env["TEMPORAL_AUTH_CLIENT_ID"]
    assert dex["staticClients"][0]["redirectURIs"] == [env["TEMPORAL_AUTH_CALLBACK_URL"]]
    assert admin_hash_path(bundle.layout).read_text().strip() in {u["hash"] for u in dex["staticPasswords"]}


def test_dex_runs_from_its_secret_at_the_paths_its_config_names(exported, bundle):
    deployment = manifest(exported, "manifests/dex.yaml", "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    container = spec["containers"][0]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    items = {i["path"]: i["key"] for i in mounts["/bundle"]["secret"]["items"]}
    files = secrets_of(exported)[mounts["/bundle"]["secret"]["secretName"]]
    config = yaml.safe_load(files[items["dex/config.yaml"]])
    assert container["args"] == ["dex", "serve", "/bundle/dex/config.yaml"]
    assert files[items[config["web"]["tlsCert"].removeprefix("/bundle/")]] == bundle.leaf_paths("dex", "server")[0].read_bytes()
    assert files[items[config["web"]["tlsKey"].removeprefix("/bundle/")]] == bundle.leaf_paths("dex", "server")[1].read_bytes()
    assert config["storage"]["config"]["file"].startswith("/var/dex/") and "/var/dex" in mounts
    assert spec["securityContext"]["runAsUser"] == 1001 and container["securityContext"]["readOnlyRootFilesystem"]
    assert manifest(exported, "manifests/dex.yaml", "Service")["spec"]["ports"][0]["port"] == bundle.config.oidc.port


def test_the_server_and_the_codec_accept_dex_users(values, exported, bundle):
    authorization = values["server"]["config"]["authorization"]
    assert bundle.config.dex_jwks_url in authorization["jwtKeyProvider"]["keySourceURIs"]
    assert authorization["permissionsClaimName"] == "groups"
    args = manifest(exported, "manifests/codec-server.yaml", "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--issuer") + 1] == "https://auth.localhost:5556/dex"
    assert bundle.config.dex_jwks_url in args


@pytest.mark.parametrize("which", ["dex", "external"])
def test_the_charts_web_deployment_from_our_values_is_valid(request, which):
    """web-deployment.yaml puts additionalEnv/Volumes/VolumeMounts in the pod as they are: the
    Deployment it renders from our values passes strict validation (env values are strings, a
    valueFrom is well formed, every mount has its volume)."""
    dest = request.getfixturevalue("exported" if which == "dex" else "external_export")
    values = yaml.safe_load((dest / "values.yaml").read_text())
    deployment = chart.web_deployment(values)
    kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    spec = deployment["spec"]["template"]["spec"]
    assert {m["name"] for m in spec["containers"][0]["volumeMounts"]} <= {v["name"] for v in spec["volumes"]}
    broken = chart.web_deployment(values)
    broken["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "X", "value": True})
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_no_secret_value_outside_a_secret(exported, bundle):
    assert_no_secret_value_outside_secrets(exported, (client_secret_path(bundle.layout).read_bytes(),
                                                      admin_hash_path(bundle.layout).read_bytes()))


def test_the_check_finds_a_leaked_secret(exported, tmp_path):
    import shutil
    leaky = tmp_path / "leaky"
    shutil.copytree(exported, leaky)
    secret = secrets_of(leaky)["temporal-bundle-web-oidc"]["client-secret"]
    (leaky / "values.yaml").write_bytes((leaky / "values.yaml").read_bytes() + b"\n# " + secret + b"\n")
    with pytest.raises(AssertionError, match="values.yaml"):
        assert_no_secret_value_outside_secrets(leaky)


# --------------------------------------------------------------------------- external issuer


def make_external_bundle(root, oidc_extra: str = ""):
    """A bundle logging people in at a company IdP with a private CA; `oidc_extra`: more of oidc:."""
    (root / "ui-secret").write_text("company-idp-secret-0123456789\n")
    (root / "idp-ca.pem").write_bytes(CA.create("company IdP CA").cert_pem())
    config = f"""\
namespaces: [{{name: default}}]
persistence: {{num_history_shards: 8}}
codec: {{ui_origins: ["https://temporal.example.com"], sans: [codec.example.com]}}
oidc:
  enabled: false{oidc_extra}
  external:
    issuer: https://login.example.com/realms/acme
    jwks_uri: https://login.example.com/realms/acme/protocol/openid-connect/certs
    client_id: temporal-ui
    client_secret_file: {root}/ui-secret
    ca_file: {root}/idp-ca.pem
    groups_claim: roles
    scopes: [openid, email, roles]
    use_id_token: true
kubernetes:
  namespace: temporal-prod
  ui_url: https://temporal.example.com
  codec_url: https://codec.example.com
"""
    return make_bundle(root / "bundle", config)


@pytest.fixture(scope="module")
def external_bundle(tmp_path_factory):
    return make_external_bundle(tmp_path_factory.mktemp("external-export"))


@pytest.fixture(scope="module")
def external_export(external_bundle, tmp_path_factory):
    dest = tmp_path_factory.mktemp("external-out") / "out"
    result = export(external_bundle, dest)
    assert result.code == 0, result.err
    return dest


def test_external_issuer_exports_only_the_ui_settings(external_export, external_bundle):
    dest = external_export
    values = yaml.safe_load((dest / "values.yaml").read_text())
    assert not (dest / "manifests/dex.yaml").exists() and not (dest / "secrets/temporal-bundle-dex.yaml").exists()
    env = env_of(values)
    assert env["TEMPORAL_AUTH_PROVIDER_URL"] == env["TEMPORAL_AUTH_ISSUER_URL"] == "https://login.example.com/realms/acme"
    assert env["TEMPORAL_AUTH_CLIENT_ID"] == "temporal-ui" and env["TEMPORAL_AUTH_USE_ID_TOKEN_AS_BEARER"] == "true"
    assert env["TEMPORAL_AUTH_CALLBACK_URL"] == "https://temporal.example.com/auth/sso/callback"
    assert env["TEMPORAL_AUTH_SCOPES"] == "openid,email,roles" and env["TEMPORAL_CODEC_ENDPOINT"] == "https://codec.example.com"
    _, name, key = env["TEMPORAL_AUTH_CLIENT_SECRET"]
    assert secrets_of(dest)[name][key] == b"company-idp-secret-0123456789"
    # The issuer's private CA: a ConfigMap mounted as a directory of Go's roots, in web and server pods.
    ca = (external_bundle.config_path.parent.parent / "idp-ca.pem").read_bytes()
    configmap = manifest(dest, "manifests/oidc-issuer-ca.yaml", "ConfigMap")
    assert configmap["data"]["ca.pem"].encode() == ca
    for component in ("web", "server"):
        directory = env_of(values, component)["SSL_CERT_DIR"].split(":")[0]
        mounts = {m["mountPath"]: m["name"] for m in values[component]["additionalVolumeMounts"]}
        volumes = {v["name"]: v for v in values[component]["additionalVolumes"]}
        assert volumes[mounts[directory]]["configMap"]["name"] == configmap["metadata"]["name"], component
    authorization = values["server"]["config"]["authorization"]
    assert authorization["jwtKeyProvider"]["keySourceURIs"][1:] == [
        "https://login.example.com/realms/acme/protocol/openid-connect/certs"]
    assert (authorization["permissionsClaimName"], authorization["audience"]) == ("roles", "temporal-ui")
    codec = manifest(dest, "manifests/codec-server.yaml", "Deployment")["spec"]["template"]["spec"]
    args = codec["containers"][0]["args"]
    assert args[args.index("--issuer") + 1] == "https://login.example.com/realms/acme"
    items = {i["path"] for v in codec["volumes"] if "secret" in v for i in v["secret"]["items"]}
    assert "trust/oidc-issuer/ca.pem" in items  # serve-codec loads it to fetch the issuer's keys
    assert chart.unknown_paths(values) == []


def test_external_export_is_valid_and_leaks_nothing(external_export, tmp_path):
    for name, doc in documents(external_export):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    assert_no_secret_value_outside_secrets(external_export, (b"company-idp-secret-0123456789",))
    values = yaml.safe_load((external_export / "values.yaml").read_text())
    config = chart.without_chart_fixed_unknown(chart.server_config(values))
    result = configcheck(config, tmp_path / "temporal.yaml")
    assert result.returncode == 0, result.stderr



def test_an_external_idp_with_a_group_table_is_exchanged_in_the_cluster(tmp_path):
    """oidc.groups next to external: the frontend trusts the bundle's keys only; the gate trades
    people's IdP tokens at the exchange, whose Secret carries the IdP's private CA (it fetches
    the IdP's keys with it)."""
    bundle = make_external_bundle(tmp_path, "\n  groups: {default-team: ['default:write']}")
    dest = tmp_path / "out"
    result = export(bundle, dest)
    assert result.code == 0, result.err
    authorization = yaml.safe_load((dest / "values.yaml").read_text())["server"]["config"]["authorization"]
    assert authorization["jwtKeyProvider"]["keySourceURIs"] == [bundle.config.jwks_url]
    assert authorization["permissionsClaimName"] == "groups"
    gate = manifest(dest, "manifests/ui-gate.yaml", "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert gate[gate.index("--exchange-url") + 1] == "https://token-exchange:8444/token"
    exchange = [n for n in secrets_of(dest) if n.endswith("token-exchange")]
    assert len(exchange) == 1, sorted(secrets_of(dest))
    assert secrets_of(dest)[exchange[0]]["trust-oidc-issuer-ca.pem"] == (tmp_path / "idp-ca.pem").read_bytes()
    pod = manifest(dest, "manifests/token-exchange.yaml", "Deployment")["spec"]["template"]["spec"]
    items = {i["path"] for v in pod["volumes"] if "secret" in v for i in v["secret"].get("items", [])}
    assert "trust/oidc-issuer/ca.pem" in items  # where serve-exchange looks for it (ops/oidc.login_policy)
    for _, doc in documents(dest):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)

def test_switching_from_dex_to_an_external_issuer_removes_dex(own_bundle, external_bundle, tmp_path):
    dest = tmp_path / "out"
    assert export(own_bundle, dest).code == 0
    assert (dest / "manifests/dex.yaml").exists()
    assert export(external_bundle, dest).code == 0
    assert not (dest / "manifests/dex.yaml").exists()
    assert not any("-dex" in p for p in read_tree(dest))


@pytest.mark.parametrize("kubernetes, fragment", [
    ("{ui_url: 'https://ui.example.com'}", "not in codec.ui_origins"),
    ("{codec_url: 'https://codec.example.com'}", "not in the codec server's certificate"),
    ("{ui_url: 'http://ui.example.com'}", "only a loopback UI may use http"),
])
def test_browser_urls_must_match_the_codec_server(own_bundle, tmp_path, kubernetes, fragment):
    text = own_bundle.config_path.read_text().split("kubernetes:")[0] + f"kubernetes: {kubernetes}\n"
    own_bundle.config_path.write_text(text)
    dest = tmp_path / "out"
    export(own_bundle, dest).assert_one_error(fragment)
    assert not dest.exists()


def test_without_ui_login_the_web_has_no_auth(tmp_path):
    made = make_bundle(tmp_path / "b", "namespaces: [{name: default}]\npersistence: {num_history_shards: 8}\n"
                                       "oidc: {enabled: false}\n")
    dest = tmp_path / "out"
    assert export(made, dest).code == 0
    values = yaml.safe_load((dest / "values.yaml").read_text())
    assert not any(k.startswith(("TEMPORAL_AUTH_", "TEMPORAL_CODEC_")) for k in env_of(values))
    assert "TEMPORAL_TLS_CERT" in env_of(values)
    assert not any("web-oidc" in p or "dex" in p for p in read_tree(dest))
