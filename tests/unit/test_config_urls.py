"""The one https URL check of bundle.yaml (config/reader.py), as each section uses it today: the
external OIDC issuer takes a bracketed IPv6 host, the token exchange's workload issuers do not."""

import pytest

from bootstrap.core.config import parse_config
from bootstrap.errors import BundleError

NS = {"namespaces": [{"name": "orders"}]}


def external(**fields):
    body = {"issuer": "https://idp.example.com", "jwks_uri": "https://idp.example.com/keys", "client_id": "ui",
            "client_secret_file": "/run/secret"} | fields
    return parse_config(NS | {"oidc": {"enabled": False, "external": body}}).oidc.external


def workload_issuer(**fields):
    body = {"name": "ci", "type": "oidc", "issuer": "https://ci.example.com", "audience": "temporal"} | fields
    policy = {"issuers": [body], "bindings": [{"issuer": "ci", "subject": "repo:*", "permissions": ["orders:write"]}]}
    return parse_config(NS | {"workload_identity": policy}).workload_identity.issuers[0]


@pytest.mark.parametrize("url", ["https://[fd00::1]", "https://[fd00::1]:8443/keys", "https://10.0.0.1:8443/keys"])
def test_the_external_issuer_takes_an_ip_host(url):
    assert external(jwks_uri=url).jwks_uri == url


@pytest.mark.parametrize("key", ["issuer", "discovery_url", "jwks_uri"])
def test_a_workload_issuer_refuses_a_bracketed_ipv6_host(key):
    with pytest.raises(BundleError, match=f"{key} must be an https URL"):
        workload_issuer(**{key: "https://[fd00::1]:6443/x"})
    assert getattr(workload_issuer(**{key: "https://10.0.0.1:6443/x"}), key) == "https://10.0.0.1:6443/x"


@pytest.mark.parametrize("url", [
    "http://idp.example.com", "https://idp.example.com/?q=1", "https://idp.example.com/#f", "https://u@idp.example.com",
    "https://[zz::1]/", "https://[::1", "https://idp..example.com/", "https://idp.example.com/a b",
])
def test_both_refuse_what_is_not_an_https_url(url):
    problem = "jwks_uri must be an https URL|jwks_uri: .* is not a valid DNS name"
    with pytest.raises(BundleError, match=problem):
        external(jwks_uri=url)
    with pytest.raises(BundleError, match=problem):
        workload_issuer(jwks_uri=url)


def test_a_required_url_is_named_when_missing():
    with pytest.raises(BundleError, match="issuer is required"):
        external(issuer="")
    with pytest.raises(BundleError, match="issuer is required"):
        workload_issuer(issuer="")
