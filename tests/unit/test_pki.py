"""The PKI an `init` produces: every leaf chains to the CA under two independent verifiers
(cryptography's RFC 5280 / WebPKI verifier and `openssl verify`), with the extensions, serials,
lifetimes and key types the config asks for."""

from __future__ import annotations

import ipaddress
import subprocess
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, SignatureAlgorithmOID
from cryptography.x509.verification import Criticality, ExtensionPolicy, PolicyBuilder, Store, VerificationError

from bootstrap.core import pki
from bootstrap.errors import BundleError
from bootstrap.core.pki import BACKDATE, CA, fingerprint, keys_match, signed_by, utcnow
from bootstrap.ops.plan import DOMAINS

SERVER_AUTH, CLIENT_AUTH = ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH
EKUS = {"server": {SERVER_AUTH}, "client": {CLIENT_AUTH}, "both": {SERVER_AUTH, CLIENT_AUTH}}
OPENSSL_PURPOSE = {"server": ["sslserver"], "client": ["sslclient"], "both": ["sslserver", "sslclient"]}


def general_name(san: str):
    try:
        return x509.IPAddress(ipaddress.ip_address(san))
    except ValueError:
        return x509.DNSName(san)


def server_verifier(store: Store, san: str, at: datetime | None = None):
    builder = PolicyBuilder().store(store)
    if at is not None:
        builder = builder.time(at)
    return builder.build_server_verifier(general_name(san))


def client_verifier(store: Store, at: datetime | None = None):
    # WebPKI's end-entity profile insists on a SAN; RFC 5280 does not when the subject is set, and
    # our client certs carry their identity in the CN (PostgreSQL cert auth maps CN -> user). So
    # relax only that one rule; everything else (EKU clientAuth, AKI, key usage...) stays WebPKI.
    ee = ExtensionPolicy.webpki_defaults_ee().may_be_present(x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)
    builder = PolicyBuilder().store(store).extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee)
    if at is not None:
        builder = builder.time(at)
    return builder.build_client_verifier()


def openssl_verify(ca_file, cert_file, purpose: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["openssl", "verify", "-x509_strict", "-purpose", purpose, "-CAfile", str(ca_file), *extra, str(cert_file)],
        capture_output=True,
        text=True,
    )


def ext(cert: x509.Certificate, cls):
    return cert.extensions.get_extension_for_class(cls)


# --------------------------------------------------------------------------- the bundle's layout


def test_bundle_holds_exactly_the_expected_leaves(ec_bundle, expected_leaves):
    specs = {(s.directory, s.name): s.usage for s in ec_bundle.specs()}
    assert specs == expected_leaves
    on_disk = {
        (p.parent.name, p.stem)
        for p in ec_bundle.root.rglob("*.pem")
        if p.parent.name not in ("private", "trust") and p.parent.parent.name != "trust"
    }
    assert on_disk == set(expected_leaves)


@pytest.mark.parametrize("bundle_name", ["ec_bundle", "rsa_bundle"])
def test_every_leaf_verifies_with_cryptography(bundle_name, request):
    bundle = request.getfixturevalue(bundle_name)
    for spec in bundle.specs():
        issuer = bundle.ca_of(spec.domain).cert
        store = Store([issuer])
        cert, key = bundle.leaf(spec.directory, spec.name)
        assert keys_match(cert, key), spec
        if spec.usage in ("server", "both"):
            for san in spec.sans:  # every SAN, DNS and IP alike
                chain = server_verifier(store, san).verify(cert, [])
                assert chain[-1] == issuer
        if spec.usage in ("client", "both"):
            verified = client_verifier(store).verify(cert, [])
            assert verified.chain[-1] == issuer


@pytest.mark.parametrize("bundle_name", ["ec_bundle", "rsa_bundle"])
def test_every_leaf_verifies_with_openssl(bundle_name, request):
    bundle = request.getfixturevalue(bundle_name)
    for spec in bundle.specs():
        cert_path, _ = bundle.leaf_paths(spec.directory, spec.name)
        for purpose in OPENSSL_PURPOSE[spec.usage]:
            result = openssl_verify(bundle.ca_file_of(spec.domain), cert_path, purpose)
            assert result.returncode == 0 and result.stdout.strip().endswith(": OK"), (spec, result.stderr)


def test_openssl_checks_the_hostname_of_server_certs(ec_bundle):
    for spec in ec_bundle.specs():
        if spec.usage == "client":
            continue
        cert_path, _ = ec_bundle.leaf_paths(spec.directory, spec.name)
        for san in spec.sans:
            flag = "-verify_ip" if san[0].isdigit() else "-verify_hostname"
            assert openssl_verify(ec_bundle.ca_file_of(spec.domain), cert_path, "sslserver", flag, san).returncode == 0
        wrong = openssl_verify(ec_bundle.ca_file_of(spec.domain), cert_path, "sslserver", "-verify_hostname", "evil.example")
        assert wrong.returncode != 0 and "hostname mismatch" in (wrong.stdout + wrong.stderr)


def test_leaves_are_rejected_under_a_foreign_ca(ec_bundle, foreign_ca, tmp_path):
    foreign_file = tmp_path / "foreign.pem"
    foreign_file.write_bytes(foreign_ca.cert_pem())
    store = Store([foreign_ca.cert])
    cert_path, _ = ec_bundle.leaf_paths("server", "frontend")
    cert, _ = ec_bundle.leaf("server", "frontend")
    with pytest.raises(VerificationError):
        server_verifier(store, "localhost").verify(cert, [])
    result = openssl_verify(foreign_file, cert_path, "sslserver")
    assert result.returncode != 0
    assert "unable to get local issuer certificate" in result.stdout + result.stderr


def test_purposes_are_enforced_by_both_verifiers(ec_bundle):
    """The frontend cert is server-only and a client cert is client-only: each verifier says no."""
    frontend, _ = ec_bundle.leaf("server", "frontend")
    client, _ = ec_bundle.leaf("clients", "worker")
    with pytest.raises(VerificationError, match="EKU"):
        client_verifier(Store([ec_bundle.ca.cert])).verify(frontend, [])
    with pytest.raises(VerificationError):
        server_verifier(Store([ec_bundle.ca_of("client").cert]), "localhost").verify(client, [])
    frontend_path, _ = ec_bundle.leaf_paths("server", "frontend")
    client_path, _ = ec_bundle.leaf_paths("clients", "worker")
    assert openssl_verify(ec_bundle.ca_file, frontend_path, "sslclient").returncode != 0
    assert openssl_verify(ec_bundle.ca_file_of("client"), client_path, "sslserver").returncode != 0


@pytest.mark.parametrize("bundle_name", ["ec_bundle", "rsa_bundle"])
def test_each_trust_domain_has_its_own_ca_and_no_leaf_crosses_domains(bundle_name, request):
    bundle = request.getfixturevalue(bundle_name)
    cas = {domain: bundle.ca_of(domain).cert for domain in DOMAINS}
    assert len({fingerprint(c) for c in cas.values()}) == len(DOMAINS)
    for spec in bundle.specs():
        cert, _ = bundle.leaf(spec.directory, spec.name)
        signers = [domain for domain, ca in cas.items() if signed_by(cert, ca)]
        assert signers == [spec.domain], spec
        cert_path, _ = bundle.leaf_paths(spec.directory, spec.name)
        for domain in DOMAINS:
            if domain != spec.domain:
                for purpose in OPENSSL_PURPOSE[spec.usage]:
                    assert openssl_verify(bundle.ca_file_of(domain), cert_path, purpose).returncode != 0, (spec, domain)
    internode = [s for s in bundle.specs() if s.domain == "internode"]
    assert [(s.directory, s.name) for s in internode] == [("server", "internode")]


def test_server_verifier_rejects_a_name_not_in_the_sans(ec_bundle):
    store = Store([ec_bundle.ca.cert])
    cert, _ = ec_bundle.leaf("server", "frontend")
    with pytest.raises(VerificationError):
        server_verifier(store, "internode.temporal.internal").verify(cert, [])


# --------------------------------------------------------------------------- extensions


def test_ca_extensions(ec_bundle):
    ca = ec_bundle.ca.cert
    bc = ext(ca, x509.BasicConstraints)
    assert bc.critical and bc.value.ca is True and bc.value.path_length == 0
    ku = ext(ca, x509.KeyUsage)
    assert ku.critical
    assert ku.value.key_cert_sign and ku.value.crl_sign and ku.value.digital_signature
    assert not ku.value.key_encipherment and not ku.value.content_commitment
    ski = ext(ca, x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(ca.public_key())
    assert ext(ca, x509.AuthorityKeyIdentifier).value.key_identifier == ski.digest
    assert ca.issuer == ca.subject
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Temporal Bundle CA"
    assert signed_by(ca, ca)


@pytest.mark.parametrize("bundle_name", ["ec_bundle", "rsa_bundle"])
def test_leaf_extensions(bundle_name, request):
    bundle = request.getfixturevalue(bundle_name)
    is_rsa = bundle.config.pki.key_algorithm.startswith("rsa")
    for spec in bundle.specs():
        ca = bundle.ca_of(spec.domain).cert
        ca_ski = ext(ca, x509.SubjectKeyIdentifier).value.digest
        cert, _ = bundle.leaf(spec.directory, spec.name)
        bc = ext(cert, x509.BasicConstraints)
        assert bc.critical and bc.value.ca is False and bc.value.path_length is None, spec
        ku = ext(cert, x509.KeyUsage)
        assert ku.critical and ku.value.digital_signature
        assert not ku.value.key_cert_sign and not ku.value.crl_sign
        # RSA key exchange needs keyEncipherment; an EC key never has it.
        assert ku.value.key_encipherment is is_rsa
        eku = ext(cert, x509.ExtendedKeyUsage)
        assert set(eku.value) == EKUS[spec.usage], spec
        assert ext(cert, x509.SubjectKeyIdentifier).value == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
        assert ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier == ca_ski
        assert cert.issuer == ca.subject
        assert signed_by(cert, ca)
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == spec.common_name
        assert set(pki.sans_of(cert)) == set(spec.sans)


def test_eku_per_leaf_spelled_out(ec_bundle):
    def eku(directory, name):
        return set(ext(ec_bundle.leaf(directory, name)[0], x509.ExtendedKeyUsage).value)

    assert eku("server", "internode") == {SERVER_AUTH, CLIENT_AUTH}
    assert eku("server", "frontend") == {SERVER_AUTH}
    assert eku("jwks", "server") == {SERVER_AUTH}
    assert eku("postgres", "server") == {SERVER_AUTH}
    for directory, name in (("clients", "system"), ("clients", "worker"), ("clients", "client"), ("ui", "client"), ("dbclient", "temporal")):
        assert eku(directory, name) == {CLIENT_AUTH}


def test_frontend_sans_are_typed(ec_bundle):
    cert, _ = ec_bundle.leaf("server", "frontend")
    san = ext(cert, x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"temporal", "localhost"}
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]


def test_serials_are_distinct_random_and_valid(ec_bundle, rsa_bundle):
    certs = [ec_bundle.ca.cert, rsa_bundle.ca.cert]
    for bundle in (ec_bundle, rsa_bundle):
        certs += [bundle.leaf(s.directory, s.name)[0] for s in bundle.specs()]
    serials = [c.serial_number for c in certs]
    assert len(set(serials)) == len(serials)
    for serial in serials:
        # RFC 5280: positive, at most 20 octets; random (CA/B: >= 64 bits of entropy) means big.
        assert 0 < serial < 2**159
        assert serial.bit_length() > 64


# --------------------------------------------------------------------------- lifetimes and keys


def test_lifetimes_come_from_the_config(bundle_maker):
    bundle = bundle_maker(
        "namespaces: [{name: default}, {name: other}]\n"
        "pki: {leaf_lifetime: 30d, ca_lifetime: 400d, renew_before: 10d}\n"
    )
    ca = bundle.ca.cert
    assert ca.not_valid_after_utc - ca.not_valid_before_utc == timedelta(days=400) + BACKDATE
    for spec in bundle.specs():
        cert, _ = bundle.leaf(spec.directory, spec.name)
        assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=30) + BACKDATE
        assert cert.not_valid_before_utc <= utcnow() - BACKDATE + timedelta(minutes=1)


def test_default_lifetimes(ec_bundle):
    ca = ec_bundle.ca.cert
    assert ca.not_valid_after_utc - ca.not_valid_before_utc == timedelta(days=3650) + BACKDATE
    cert, _ = ec_bundle.leaf("server", "frontend")
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=90) + BACKDATE


def test_leaf_lifetime_is_capped_by_the_ca():
    ca = CA.create(lifetime=timedelta(days=10))
    leaf = ca.issue_cert("localhost", lifetime=timedelta(days=90))
    assert leaf.cert.not_valid_after_utc == ca.cert.not_valid_after_utc


def test_leaves_from_an_ageing_ca_on_disk_are_capped(fresh_bundle, plant_file):
    """A CA with 20 days left and leaf_lifetime 90d: generate-certs issues leaves ending with the CA."""
    old = CA.create(lifetime=timedelta(days=100), now=utcnow() - timedelta(days=80))
    layout = fresh_bundle.layout
    plant_file(layout.ca_cert, old.cert_pem())
    plant_file(layout.ca_key, old.key_pem())
    plant_file(layout.trust_bundle, old.cert_pem())
    result = fresh_bundle.run("generate-certs")
    assert result.code == 0, result.err
    assert "re-issued: issued by another CA" in result.out
    for spec in (s for s in fresh_bundle.specs() if s.domain == "server"):
        cert, key = fresh_bundle.leaf(spec.directory, spec.name)
        assert cert.not_valid_after_utc == old.cert.not_valid_after_utc
        assert signed_by(cert, old.cert) and keys_match(cert, key)


def test_ecdsa_p256_is_the_default(ec_bundle):
    certs = [ec_bundle.ca.cert] + [ec_bundle.leaf(s.directory, s.name)[0] for s in ec_bundle.specs()]
    for cert in certs:
        public = cert.public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp256r1"
        assert cert.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA256
    assert isinstance(ec_bundle.ca.key, ec.EllipticCurvePrivateKey)


def test_rsa_3072_when_configured(rsa_bundle):
    assert rsa_bundle.config.pki.key_algorithm == "rsa-3072"
    certs = [rsa_bundle.ca.cert] + [rsa_bundle.leaf(s.directory, s.name)[0] for s in rsa_bundle.specs()]
    for cert in certs:
        public = cert.public_key()
        assert isinstance(public, rsa.RSAPublicKey) and public.key_size == 3072
        assert public.public_numbers().e == 65537
        assert cert.signature_algorithm_oid == SignatureAlgorithmOID.RSA_WITH_SHA256
    for spec in rsa_bundle.specs():
        _, key = rsa_bundle.leaf(spec.directory, spec.name)
        assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 3072


# --------------------------------------------------------------------------- the pure CA API


def test_ca_from_pem_rejects_a_mismatched_key():
    a, b = CA.create(), CA.create()
    with pytest.raises(BundleError, match="do not belong together"):
        CA.from_pem(a.cert_pem(), b.key_pem())


def test_issue_cert_rejects_unknown_usage_and_empty_identity():
    ca = CA.create()
    with pytest.raises(BundleError, match="usage"):
        ca.issue_cert("localhost", usage="email")
    with pytest.raises(BundleError):
        ca.issue_cert()


def test_unsupported_key_algorithm_is_a_bundle_error():
    with pytest.raises(BundleError, match="unsupported key algorithm"):
        pki.generate_key("ed25519")


def test_expired_leaf_fails_verification_at_now_and_passes_in_its_window():
    past = utcnow() - timedelta(days=30)
    ca = CA.create(now=past - timedelta(days=1))
    leaf = ca.issue_cert("localhost", lifetime=timedelta(days=1), now=past)
    store = Store([ca.cert])
    with pytest.raises(VerificationError):
        server_verifier(store, "localhost").verify(leaf.cert, [])
    inside = (past + timedelta(hours=1)).astimezone(timezone.utc)
    assert server_verifier(store, "localhost", at=inside).verify(leaf.cert, [])
