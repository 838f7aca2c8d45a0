"""The security claims, each proven against the real server: every way in without the right
certificate or token is refused, and the right role gets exactly what it should."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import uuid
from datetime import timedelta

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from bootstrap.core.pki import CA, utcnow
from bootstrap.core.tokens import SigningKey, mint_token
from tests.support.authorization import Identity, identity, read, run


@pytest.fixture(params=["file-keys", "pkcs11-keys"])
def keyed_cluster(request):
    """The whole matrix on both key backends: CA and signing keys in files (the SQLite cluster), and
    in a SoftHSM2 token, where every token and certificate below is signed inside the token."""
    return request.getfixturevalue("sqlite_cluster" if request.param == "file-keys" else "on_token")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def active_key(cluster) -> SigningKey:
    kid = read(cluster, "private/jwt/active").decode().strip()
    return SigningKey.from_pem(read(cluster, f"private/jwt/{kid}.key"))


def claims_for(cluster, permissions, **overrides):
    now = int(utcnow().timestamp())
    claims = {"sub": "attacker", "iss": "temporal-bundle", "aud": "temporal", "iat": now, "nbf": now,
              "exp": now + 3600, "jti": str(uuid.uuid4()), "permissions": permissions,
              "groups": permissions}
    claims.update(overrides)
    return claims


def raw_token(header: dict, claims: dict, signature: bytes = b"") -> str:
    def part(obj):
        return b64(json.dumps(obj, separators=(",", ":")).encode())

    return f"{part(header)}.{part(claims)}.{b64(signature)}"


# --------------------------------------------------------------------------- allowed


@pytest.mark.parametrize(
    "role,action,namespace",
    [
        ("system", "register", "default"),
        ("client", "start", "default"),
        ("client", "describe", "default"),
        ("client", "start", "other"),
        ("worker", "poll", "default"),
        ("scoped", "start", "default"),
        ("reader", "describe", "default"),
    ],
)
def test_allowed(keyed_cluster, role, action, namespace):
    assert run(keyed_cluster, identity(keyed_cluster, role), action, namespace) == "ok"


# --------------------------------------------------------------------------- mTLS refusals


def test_no_client_certificate_is_refused(keyed_cluster):
    who = identity(keyed_cluster)
    assert run(keyed_cluster, Identity(None, None, who.token, who.ca), "describe") == "refused"


def test_certificate_from_a_foreign_ca_is_refused(keyed_cluster):
    foreign = CA.create("Evil CA").issue_cert(common_name="temporal-bundle:client", usage="client")
    who = identity(keyed_cluster)
    assert run(keyed_cluster, Identity(foreign.cert_pem(), foreign.key_pem(), who.token, who.ca), "describe") == "refused"


def test_expired_client_certificate_is_refused(keyed_cluster):
    # From the right CA (the client domain's), so only the expiry can refuse it.
    ca = CA.from_pem(read(keyed_cluster, "private/ca-client.pem"), read(keyed_cluster, "private/ca-client.key"))
    expired = ca.issue_cert(common_name="temporal-bundle:client", usage="client",
                            now=utcnow() - timedelta(days=10), lifetime=timedelta(days=1))
    who = identity(keyed_cluster)
    assert run(keyed_cluster, Identity(expired.cert_pem(), expired.key_pem(), who.token, who.ca), "describe") == "refused"


def test_valid_certificates_of_other_trust_domains_are_refused(keyed_cluster):
    """The internode and database client certs are valid client certs, just not from the client
    domain: the frontend refuses them even with a valid token."""
    who = identity(keyed_cluster)
    for cert in ("server/internode", "dbclient/temporal") if keyed_cluster.driver == "postgres" else ("server/internode",):
        stranger = Identity(read(keyed_cluster, f"{cert}.pem"), read(keyed_cluster, f"{cert}.key"), who.token, who.ca)
        assert run(keyed_cluster, stranger, "describe") == "refused", cert


def test_server_certificate_without_client_auth_is_refused(keyed_cluster):
    who = identity(keyed_cluster)
    who = Identity(read(keyed_cluster, "server/frontend.pem"), read(keyed_cluster, "server/frontend.key"), who.token, who.ca)
    assert run(keyed_cluster, who, "describe") == "refused"


# --------------------------------------------------------------------------- token refusals


def _with_token(cluster, token):
    return identity(cluster, "client", token=token)


def test_no_token_is_denied(keyed_cluster):
    assert run(keyed_cluster, _with_token(keyed_cluster, None), "start") == "denied"
    assert run(keyed_cluster, _with_token(keyed_cluster, None), "describe") == "denied"


def test_expired_token_is_denied(keyed_cluster):
    token = mint_token(active_key(keyed_cluster), role="client", permissions=["default:write"], issuer="temporal-bundle",
                       audience="temporal", lifetime=timedelta(hours=1), now=utcnow() - timedelta(hours=2))
    assert run(keyed_cluster, _with_token(keyed_cluster, token.encoded), "start") == "denied"


def test_token_signed_by_unknown_key_is_denied(keyed_cluster):
    token = mint_token(SigningKey.generate(), role="client", permissions=["default:write"], issuer="temporal-bundle",
                       audience="temporal", lifetime=timedelta(hours=1))
    assert run(keyed_cluster, _with_token(keyed_cluster, token.encoded), "start") == "denied"


def test_token_with_known_kid_but_other_key_is_denied(keyed_cluster):
    kid = active_key(keyed_cluster).kid
    forged = jwt.encode(claims_for(keyed_cluster, ["temporal-system:admin"]), SigningKey.generate().private_key,
                        algorithm="ES256", headers={"kid": kid})
    assert run(keyed_cluster, _with_token(keyed_cluster, forged), "start") == "denied"


def test_token_without_kid_is_denied(keyed_cluster):
    token = jwt.encode(claims_for(keyed_cluster, ["default:write"]), active_key(keyed_cluster).private_key, algorithm="ES256")
    assert "kid" not in jwt.get_unverified_header(token)
    assert run(keyed_cluster, _with_token(keyed_cluster, token), "start") == "denied"


def test_alg_none_is_denied(keyed_cluster):
    token = raw_token({"alg": "none", "typ": "JWT", "kid": active_key(keyed_cluster).kid},
                      claims_for(keyed_cluster, ["temporal-system:admin"]))
    assert run(keyed_cluster, _with_token(keyed_cluster, token), "start") == "denied"


def test_tampered_payload_is_denied(keyed_cluster):
    header, payload, signature = keyed_cluster.token("reader").split(".")
    claims = json.loads(unb64(payload))
    claims["permissions"] = claims["groups"] = ["temporal-system:admin"]
    tampered = ".".join([header, b64(json.dumps(claims).encode()), signature])
    assert run(keyed_cluster, _with_token(keyed_cluster, tampered), "register") == "denied"
    # The untampered reader token is valid: the denial above is the signature check, not the role.
    assert run(keyed_cluster, _with_token(keyed_cluster, keyed_cluster.token("reader")), "describe") == "ok"


def test_algorithm_confusion_is_denied(keyed_cluster):
    key = active_key(keyed_cluster)
    public_pem = key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    claims = claims_for(keyed_cluster, ["temporal-system:admin"])
    # HS256 keyed with the public key: the classic confusion attack.
    unsigned = raw_token({"alg": "HS256", "typ": "JWT", "kid": key.kid}, claims)[:-1]
    hs = unsigned + "." + b64(hmac.new(public_pem, unsigned.encode(), hashlib.sha256).digest())
    assert run(keyed_cluster, _with_token(keyed_cluster, hs), "register") == "denied"
    # A genuine ES256 signature relabelled RS256.
    es = jwt.encode(claims, key.private_key, algorithm="ES256", headers={"kid": key.kid})
    header, payload, signature = es.split(".")
    relabelled = raw_token({"alg": "RS256", "typ": "JWT", "kid": key.kid}, claims).rsplit(".", 2)[0]
    assert run(keyed_cluster, _with_token(keyed_cluster, f"{relabelled}.{payload}.{signature}"), "register") == "denied"


def test_wrong_audience_is_denied(keyed_cluster):
    token = mint_token(active_key(keyed_cluster), role="client", permissions=["default:write"], issuer="temporal-bundle",
                       audience="some-other-service", lifetime=timedelta(hours=1))
    assert run(keyed_cluster, _with_token(keyed_cluster, token.encoded), "start") == "denied"


# --------------------------------------------------------------------------- role refusals


def test_client_token_cannot_register_namespaces(keyed_cluster):
    assert run(keyed_cluster, identity(keyed_cluster, "client"), "register") == "denied"


def test_worker_and_client_tokens_are_scoped_to_their_namespaces(keyed_cluster):
    assert run(keyed_cluster, identity(keyed_cluster, "scoped"), "start", "other") == "denied"
    assert run(keyed_cluster, identity(keyed_cluster, "scoped"), "describe", "other") == "denied"


def test_read_only_token_cannot_start_workflows(keyed_cluster):
    assert run(keyed_cluster, identity(keyed_cluster, "reader"), "start") == "denied"


def test_bare_worker_permission_is_denied_everything(keyed_cluster):
    # Why the config refuses roles with only <ns>:worker: the server denies them every API.
    token = mint_token(active_key(keyed_cluster), role="w", permissions=["default:worker"], issuer="temporal-bundle",
                       audience="temporal", lifetime=timedelta(hours=1))
    assert run(keyed_cluster, _with_token(keyed_cluster, token.encoded), "describe") == "denied"
    assert run(keyed_cluster, _with_token(keyed_cluster, token.encoded), "start") == "denied"


# --------------------------------------------------------------------------- the same through the temporal CLI


def cli(cluster, *args, role="client", cert_role=None, token=...):
    argv = cluster.cli_base(None, cert_role=cert_role or role)
    if cert_role == "":
        argv = _drop_option_values(argv, ("--tls-cert-path", "--tls-key-path"))
    if token is ...:
        token = cluster.token(role)
    if token:
        argv += ["--api-key", token]
    return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=60)


def _drop_option_values(argv, options):
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        if item in options:
            skip = True
            continue
        out.append(item)
    return out


def test_cli_client_token_lists_workflows(keyed_cluster):
    result = cli(keyed_cluster, "workflow", "list", "-n", "default")
    assert result.returncode == 0, result.stderr


def test_cli_without_token_is_unauthorized(keyed_cluster):
    result = cli(keyed_cluster, "workflow", "list", "-n", "default", token=None)
    assert result.returncode != 0 and "Request unauthorized" in result.stderr


def test_cli_client_token_cannot_create_namespace(keyed_cluster):
    result = cli(keyed_cluster, "operator", "namespace", "create", "-n", f"cli-{uuid.uuid4().hex[:6]}")
    assert result.returncode != 0 and "Request unauthorized" in result.stderr


def test_cli_system_token_creates_namespace(keyed_cluster):
    result = cli(keyed_cluster, "operator", "namespace", "create", "-n", f"cli-{uuid.uuid4().hex[:6]}", role="system")
    assert result.returncode == 0, result.stderr


def test_cli_without_client_cert_is_refused(keyed_cluster):
    result = cli(keyed_cluster, "workflow", "list", "-n", "default", cert_role="")
    assert result.returncode != 0
    assert "Request unauthorized" not in result.stderr  # refused by TLS, before authorization


def test_cli_alg_none_token_is_refused(keyed_cluster):
    token = raw_token({"alg": "none", "typ": "JWT", "kid": active_key(keyed_cluster).kid},
                      claims_for(keyed_cluster, ["temporal-system:admin"]))
    result = cli(keyed_cluster, "operator", "namespace", "create", "-n", "cli-none", token=token)
    assert result.returncode != 0
