"""Search bytes for a private key whose public half is one of ours (the CA and JWT signing keys).

The keys under test are non-extractable, so their private bytes are unknown: a search for them
looks instead for every private-key structure and checks its public half.
- PEM blocks (`-----BEGIN ... PRIVATE KEY-----`, PKCS#8, SEC1, PKCS#1) anywhere in the data;
  an encrypted one counts as a finding (whose key it is cannot be told).
- DER structures (PKCS#8, SEC1, PKCS#1) starting just before each occurrence of what such a
  structure always holds: the EC/RSA algorithm OIDs, the P-256 curve OID, an RSA modulus or an EC
  point of ours. A private key's public half is computed from it, so a structure without the
  optional public field is still matched.
- JWK objects with a private member "d".
A private key of another public key (a leaf's, which stays a file by design) is counted, not a
finding: the count shows the search does find keys where there are some.
"""

from __future__ import annotations

import base64
import io
import json
import re
import tarfile
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]*PRIVATE KEY)-----(.*?)-----END \1-----", re.S)
JWK_WITH_D = re.compile(rb'\{[^{}]{0,8000}"d"\s*:\s*"[A-Za-z0-9_\-]+"[^{}]{0,8000}\}')
OID_ANCHORS = (
    bytes.fromhex("06072a8648ce3d0201"),  # id-ecPublicKey
    bytes.fromhex("06082a8648ce3d030107"),  # prime256v1 (SEC1 parameters)
    bytes.fromhex("06092a864886f70d010101"),  # rsaEncryption
)
LOOK_BACK = 64  # bytes from a DER structure's start to its algorithm or curve OID (PKCS#8, SEC1)


def spki(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def raw_public(public_key) -> bytes:
    """What a private-key structure of this key carries verbatim: the modulus or the EC point."""
    if isinstance(public_key, rsa.RSAPublicKey):
        n = public_key.public_numbers().n
        return n.to_bytes((n.bit_length() + 7) // 8, "big")
    return public_key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def der_length(data: bytes, start: int) -> int | None:
    """Total length of the DER SEQUENCE at `start`, or None."""
    if start + 2 > len(data) or data[start] != 0x30:
        return None
    first = data[start + 1]
    if first < 0x80:
        return 2 + first
    count = first & 0x7F
    if count == 0 or count > 3 or start + 2 + count > len(data):
        return None
    return 2 + count + int.from_bytes(data[start + 2:start + 2 + count], "big")


@dataclass
class KeySearch:
    """`targets`: name -> public key. `scan()` every blob; `findings` must stay empty."""

    targets: dict
    findings: list[str] = field(default_factory=list)
    other_private_keys: int = 0  # private keys of other public keys (leaves): proof the search sees keys
    scanned_bytes: int = 0
    scanned_blobs: int = 0

    def __post_init__(self):
        self._by_spki = {spki(k): name for name, k in self.targets.items()}
        self._raw = [raw_public(k) for k in self.targets.values()]
        self._seen: set[tuple[str, int]] = set()

    def _check_private(self, where: str, key) -> None:
        name = self._by_spki.get(spki(key.public_key()))
        finding = f"{where}: the private key of {name}"
        if name and finding not in self.findings:  # PKCS#8 holds a PKCS#1 structure: one finding
            self.findings.append(finding)
        else:
            self.other_private_keys += 1

    def scan(self, where: str, data: bytes) -> None:
        self.scanned_bytes += len(data)
        self.scanned_blobs += 1
        for match in PEM_BLOCK.finditer(data):
            block = match.group(0)
            if b"ENCRYPTED" in match.group(1) or b"Proc-Type: 4,ENCRYPTED" in block:
                self.findings.append(f"{where}: an encrypted private key block (whose key cannot be told)")
                continue
            try:
                key = serialization.load_pem_private_key(block, password=None)
            except (ValueError, TypeError, Exception):  # noqa: BLE001 - any unreadable block is not a key
                continue
            self._check_private(where, key)
        starts: set[int] = set()
        for needle in (*OID_ANCHORS, *self._raw):
            at = data.find(needle)
            while at != -1:
                starts.update(j for j in range(max(0, at - LOOK_BACK), at) if data[j] == 0x30)
                if needle in self._raw:
                    # PKCS#1 and SEC1 with the public field: the key's start is further back.
                    starts.update(j for j in range(max(0, at - 600), at) if data[j] == 0x30)
                at = data.find(needle, at + 1)
        for start in sorted(starts):
            length = der_length(data, start)
            if not length or length > 10000 or start + length > len(data):
                continue
            try:
                key = serialization.load_der_private_key(data[start:start + length], password=None)
            except Exception:  # noqa: BLE001 - most candidates are certificates, public keys, noise
                continue
            if (where, start) not in self._seen:
                self._seen.add((where, start))
                self._check_private(where, key)
        if b'"d"' in data:
            for match in JWK_WITH_D.finditer(data):
                self._check_jwk(where, match.group(0))

    def _check_jwk(self, where: str, text: bytes) -> None:
        try:
            jwk = json.loads(text)
        except ValueError:
            return
        for name, key in self.targets.items():
            if isinstance(key, rsa.RSAPublicKey) and jwk.get("n") == b64url(raw_public(key)):
                self.findings.append(f"{where}: a JWK with the private member of {name}")
            elif isinstance(key, ec.EllipticCurvePublicKey) and jwk.get("x") == b64url(
                    key.public_numbers().x.to_bytes(32, "big")):
                self.findings.append(f"{where}: a JWK with the private member of {name}")

    def scan_tar(self, where: str, tar_bytes_or_file) -> None:
        """Every regular file of a tar archive (nested layer tars of `docker save` included)."""
        fileobj = io.BytesIO(tar_bytes_or_file) if isinstance(tar_bytes_or_file, bytes) else tar_bytes_or_file
        with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                data = tar.extractfile(member).read()
                name = f"{where}:{member.name}"
                if member.name.endswith((".tar", "/layer.tar")) or (data[257:262] == b"ustar"):
                    self.scan_tar(name, data)
                else:
                    self.scan(name, data)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
