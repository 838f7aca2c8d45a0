"""export-helm with a company directory behind Dex (oidc.connectors): the cluster runs as compose
does. The frontend trusts the bundle's keys only, so a directory group's raw name (even one
spelled `orders:admin`) grants nothing there; the UI gate trades each person's Dex token at the
token exchange for a bundle token carrying the permissions oidc.groups maps; the exchange runs
for that alone, reachable from the gate only, with no service account and no role to review
cluster tokens."""

from __future__ import annotations

import kubernetes_validate
import pytest
import yaml

from bootstrap.core.pki import load_cert, sans_of, signed_by
from tests.support.bundles import make_bundle
from tests.support.exports import KUBERNETES_VERSION, by_kind, documents, export, secrets_of

CONFIG = """\
namespaces: [{{name: orders}}, {{name: payments}}]
kubernetes: {{namespace: temporal-prod}}
oidc:
  groups:
    admins: ["temporal-system:admin"]
    payments-oncall: ["payments:write"]
  connectors:
    - type: ldap
      id: corp
      name: Corporate directory
      config:
        host: ldap.corp.example:636
        rootCA: /etc/dex/ldap-ca.pem
        bindDN: cn=dex,ou=services,dc=corp,dc=example
        bindPW_file: {root}/bind-password
        userSearch: {{baseDN: "ou=people,dc=corp,dc=example", username: uid, idAttr: uid, emailAttr: mail,
                     nameAttr: cn}}
        groupSearch: {{baseDN: "ou=groups,dc=corp,dc=example", nameAttr: cn,
                      userMatchers: [{{userAttr: DN, groupAttr: member}}]}}
"""


@pytest.fixture(scope="module")
def directory_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("directory-bundle")
    (root / "bind-password").write_text("not-a-real-password\n")
    bundle = make_bundle(root, CONFIG.format(root=root))
    dest = tmp_path_factory.mktemp("directory-export") / "out"
    result = export(bundle, dest)
    assert result.code == 0, result.err
    return bundle, dest


def frontend_key_sources(values: dict) -> list[str]:
    return values["server"]["config"]["authorization"]["jwtKeyProvider"]["keySourceURIs"]


def test_every_document_passes_strict_validation(directory_export):
    _, dest = directory_export
    for _, doc in documents(dest):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_frontend_trusts_the_bundles_keys_only(directory_export, values):
    bundle, dest = directory_export
    exported = yaml.safe_load((dest / "values.yaml").read_text())
    assert frontend_key_sources(exported) == [bundle.config.jwks_url]
    # Without connectors, Dex's users are bundle users with bundle-named groups: their tokens go
    # to the frontend directly, so Dex's keys are a key source there (the export tier's bundle).
    assert bundle.config.dex_jwks_url in frontend_key_sources(values)


def test_the_gate_exchanges_logins_at_the_exchange(directory_export):
    _, dest = directory_export
    args = by_kind(dest, "Deployment")["ui-gate"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--exchange-url") + 1] == "https://token-exchange:8444/token"
    assert args.count("--exchange-url") == 1


def test_the_exchange_runs_with_its_own_key_and_no_cluster_access(directory_export):
    bundle, dest = directory_export
    docs = [d for d in yaml.safe_load_all((dest / "manifests/token-exchange.yaml").read_text()) if d]
    assert sorted(d["kind"] for d in docs) == ["Deployment", "NetworkPolicy", "Service"]
    spec = by_kind(dest, "Deployment")["token-exchange"]["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is False and "serviceAccountName" not in spec
    secret = secrets_of(dest)["temporal-bundle-token-exchange"]
    assert sorted(secret) == ["exchange-server.key", "exchange-server.pem", "exchange-signing.key", "trust-ca.pem"]
    # It checks Dex's keys (discovery over TLS) with the CA its Secret holds; the gate checks the
    # exchange's certificate by the name in its --exchange-url.
    dex_cert = load_cert(bundle.leaf_paths("dex", "server")[0].read_bytes(), "dex")
    assert signed_by(dex_cert, load_cert(secret["trust-ca.pem"], "trust"))
    assert "token-exchange" in sans_of(load_cert(secret["exchange-server.pem"], "exchange"))


def test_only_the_gate_reaches_the_exchange(directory_export):
    _, dest = directory_export
    [rule] = by_kind(dest, "NetworkPolicy")["temporal-token-exchange"]["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": by_kind(dest, "Deployment")["ui-gate"]["spec"]["selector"]["matchLabels"]}}]
    assert rule["ports"] == [{"port": 8444, "protocol": "TCP"}]


def test_no_worker_example_without_workload_identity(directory_export):
    _, dest = directory_export
    assert not (dest / "examples").exists()
