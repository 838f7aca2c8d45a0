"""A tiny, pure PKI: a CA object that issues leaf certificates. Nothing here touches the disk.

Modelled on trustme: `CA.create(...)`, `ca.issue_cert(*sans, usage=...)`, results are objects with
`cert_pem()` / `key_pem()`; writing them is the store's job.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from . import hsm
from ..errors import BundleError

# Issued certificates start slightly in the past so a peer whose clock is a little behind ours
# does not reject a freshly rotated certificate as "not yet valid".
BACKDATE = timedelta(minutes=5)
USAGES = {
    "server": (ExtendedKeyUsageOID.SERVER_AUTH,),
    "client": (ExtendedKeyUsageOID.CLIENT_AUTH,),
    # Temporal reuses the internode server certificate as its client certificate between services.
    "both": (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
}

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def generate_key(algorithm: str) -> PrivateKey:
    if algorithm == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm.startswith("rsa-"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(algorithm[4:]))
    raise BundleError(f"unsupported key algorithm {algorithm!r}")


def key_algorithm_of(key) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if key.curve.name != "secp256r1":
            raise BundleError(f"unsupported EC curve {key.curve.name} (only P-256)")
        return "ecdsa-p256"
    return f"rsa-{key.key_size}"


def private_key_pem(key: PrivateKey) -> bytes:
    """PEM PKCS#8; for a key inside a PKCS#11 token, its reference (hsm.py): no key material."""
    if hasattr(key, "reference"):
        return key.reference()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def load_private_key(pem: bytes, what: str) -> PrivateKey:
    if hsm.is_reference(pem):
        return hsm.resolve(pem, what)
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise BundleError(f"{what}: not a readable unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise BundleError(f"{what}: unsupported private key type {type(key).__name__}")
    return key


def load_cert(pem: bytes, what: str) -> x509.Certificate:
    certs = load_certs(pem, what)
    return certs[0]


def load_certs(pem: bytes, what: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise BundleError(f"{what}: not a readable PEM certificate") from None
    return certs


def public_key_bytes(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def keys_match(cert: x509.Certificate, key: PrivateKey) -> bool:
    return public_key_bytes(cert.public_key()) == public_key_bytes(key.public_key())


def fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    public = issuer.public_key()
    try:
        if isinstance(public, rsa.RSAPublicKey):
            public.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), cert.signature_hash_algorithm)
        else:
            public.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
    except InvalidSignature:
        return False
    return True


def sans_of(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    names = [str(n) for n in ext.get_values_for_type(x509.DNSName)]
    names += [str(ip) for ip in ext.get_values_for_type(x509.IPAddress)]
    return tuple(names)


def _general_name(san: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(san))
    except ValueError:
        return x509.DNSName(san)


class _CertWithKey:
    """PEM views shared by a leaf and the CA: both hold `cert` and its `key`."""

    cert: x509.Certificate
    key: PrivateKey

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return private_key_pem(self.key)

    @property
    def not_after(self) -> datetime:
        return self.cert.not_valid_after_utc


@dataclass(frozen=True)
class LeafCert(_CertWithKey):
    """An issued certificate and its private key."""

    cert: x509.Certificate
    key: PrivateKey


class CA(_CertWithKey):
    """A certificate authority: a self-signed CA certificate plus its key."""

    def __init__(self, cert: x509.Certificate, key: PrivateKey):
        if not keys_match(cert, key):
            raise BundleError("CA certificate and CA key do not belong together")
        self.cert, self.key = cert, key

    @classmethod
    def create(
        cls,
        common_name: str = "Temporal Bundle CA",
        *,
        organization: str = "Temporal Bundle",
        key_algorithm: str = "ecdsa-p256",
        lifetime: timedelta = timedelta(days=3650),
        now: datetime | None = None,
        key: PrivateKey | None = None,
    ) -> "CA":
        """`key`: the CA's key if made elsewhere (inside a PKCS#11 token); else a new one."""
        now = now or utcnow()
        key = key or generate_key(key_algorithm)
        name = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ])
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True, rsa_key=False), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def from_pem(cls, cert_pem: bytes, key_pem: bytes) -> "CA":
        return cls(load_cert(cert_pem, "CA certificate"), load_private_key(key_pem, "CA key"))

    def issue_cert(
        self,
        *sans: str,
        common_name: str | None = None,
        usage: str = "server",
        lifetime: timedelta = timedelta(days=90),
        key_algorithm: str | None = None,
        organization: str | None = None,
        now: datetime | None = None,
        key: PrivateKey | None = None,
    ) -> LeafCert:
        if usage not in USAGES:
            raise BundleError(f"unknown certificate usage {usage!r}")
        if not sans and not common_name:
            raise BundleError("a certificate needs a common name or at least one SAN")
        now = now or utcnow()
        key = key or generate_key(key_algorithm or key_algorithm_of(self.key))
        attributes = []
        if organization:
            attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name or sans[0]))
        # Never outlive the CA: a chain with a leaf valid past its issuer fails in some verifiers.
        not_after = min(now + lifetime, self.not_after)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attributes))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False, rsa_key=isinstance(key, rsa.RSAPrivateKey)), critical=True)
            .add_extension(x509.ExtendedKeyUsage(list(USAGES[usage])), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                    self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
                ),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName([_general_name(s) for s in sans]), critical=False)
        return LeafCert(builder.sign(self.key, hashes.SHA256()), key)


def _key_usage(*, ca: bool, rsa_key: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=rsa_key and not ca,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def extended_key_usages(cert: x509.Certificate) -> set:
    try:
        return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return set()
