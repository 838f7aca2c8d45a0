"""The private-key search of the pkcs11 stack test (tests/support/key_search.py) finds a key of ours
in every form it claims to, and only ours: a search that finds nothing must be able to find."""

from __future__ import annotations

import io
import json
import tarfile

import jwt
from cryptography.hazmat.primitives import serialization as s
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.support.key_search import KeySearch

NOISE = b"\x00\x30\x82 some bytes \x30\x13\x06\x07" * 50


def forms(key) -> dict[str, bytes]:
    out = {
        "pem pkcs8": key.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption()),
        "pem traditional": key.private_bytes(s.Encoding.PEM, s.PrivateFormat.TraditionalOpenSSL, s.NoEncryption()),
        "der pkcs8": key.private_bytes(s.Encoding.DER, s.PrivateFormat.PKCS8, s.NoEncryption()),
        "der traditional": key.private_bytes(s.Encoding.DER, s.PrivateFormat.TraditionalOpenSSL, s.NoEncryption()),
        "jwk": json.dumps(json.loads(jwt.algorithms.get_default_algorithms()[
            "ES256" if isinstance(key, ec.EllipticCurvePrivateKey) else "RS256"].to_jwk(key))).encode(),
    }
    if isinstance(key, ec.EllipticCurvePrivateKey):
        # SEC1 without the optional public key: found by its curve OID, matched by its scalar.
        d = key.private_numbers().private_value.to_bytes(32, "big")
        out["der sec1 without public"] = bytes.fromhex("3031020101") + b"\x04\x20" + d + bytes.fromhex("a00a06082a8648ce3d030107")
    return out


def test_finds_ours_in_every_form_and_counts_others():
    ours = {"ca": ec.generate_private_key(ec.SECP256R1()), "signing": rsa.generate_private_key(65537, 2048)}
    leaf = ec.generate_private_key(ec.SECP256R1())
    for name, key in ours.items():
        for form, blob in forms(key).items():
            search = KeySearch({n: k.public_key() for n, k in ours.items()})
            search.scan(form, NOISE + blob + NOISE)
            assert search.findings == [f"{form}: the private key of {name}"] or (
                form == "jwk" and search.findings == [f"{form}: a JWK with the private member of {name}"]), (form, search.findings)
    search = KeySearch({n: k.public_key() for n, k in ours.items()})
    search.scan("leaf", leaf.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption()))
    search.scan("public", b"".join(k.public_key().public_bytes(s.Encoding.DER, s.PublicFormat.SubjectPublicKeyInfo)
                                   for k in ours.values()))
    assert search.findings == [] and search.other_private_keys == 1


def test_finds_a_key_inside_nested_tars_and_refuses_encrypted_blocks():
    key = ec.generate_private_key(ec.SECP256R1())
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w") as tar:
        blob = key.private_bytes(s.Encoding.DER, s.PrivateFormat.PKCS8, s.NoEncryption())
        info = tarfile.TarInfo("etc/key.der")
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
    outer = io.BytesIO()
    with tarfile.open(fileobj=outer, mode="w") as tar:
        info = tarfile.TarInfo("blobs/sha256/abc")
        info.size = len(inner.getvalue())
        tar.addfile(info, io.BytesIO(inner.getvalue()))
    search = KeySearch({"ca": key.public_key()})
    search.scan_tar("image", outer.getvalue())
    assert search.findings == ["image:blobs/sha256/abc:etc/key.der: the private key of ca"]
    search = KeySearch({"ca": key.public_key()})
    search.scan("enc", key.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.BestAvailableEncryption(b"pw")))
    assert len(search.findings) == 1 and "encrypted" in search.findings[0]
