"""Root keys inside a PKCS#11 token (SoftHSM2, a hardware HSM, a cloud KMS's PKCS#11 library).

Every CA key and JWT signing key is generated in the token as a token object with
CKA_SENSITIVE=true and CKA_EXTRACTABLE=false, and is used only there: `TokenECKey` and
`TokenRSAKey` implement cryptography's private-key interfaces with `sign()` done by C_Sign, so
`x509.CertificateBuilder.sign()` and PyJWT sign with them as with any key, and the certificate
body is still built by `cryptography`. What the bundle keeps on disk in place of a private key
is a reference (the key's label), never key material: see `reference()`.

The data keys' KEK is an AES-256 key in the token (TokenKek), used with CKM_AES_GCM.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature

from ..errors import BundleError
from .kek import NONCE_BYTES, UnwrapError
from ..store import read_secret

REFERENCE_HEADER = b"# temporal-bundle: this private key is inside a PKCS#11 token; only its label is here\n"
LABEL_PREFIX = "tb-"
# Debian's SoftHSM2 module, as the bundle image has it (a trial token on the bundle-hsm volume).
SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"

_lock = threading.RLock()  # one session, used by one thread at a time


def is_reference(data: bytes | None) -> bool:
    return bool(data) and data.startswith(REFERENCE_HEADER)


class TokenSession:
    """A logged-in read-write session on the configured token."""

    def __init__(self, session, token_label: str):
        self.session, self.token_label = session, token_label

    # ---- private keys

    def generate(self, algorithm: str):
        import pkcs11
        from pkcs11 import Attribute, KeyType
        from pkcs11.util.ec import encode_named_curve_parameters

        private = {Attribute.EXTRACTABLE: False, Attribute.SENSITIVE: True, Attribute.SIGN: True,
                   Attribute.DECRYPT: False, Attribute.UNWRAP: False, Attribute.DERIVE: False}
        public = {Attribute.VERIFY: True, Attribute.ENCRYPT: False, Attribute.WRAP: False}
        temp_label = LABEL_PREFIX + "new-" + os.urandom(8).hex()
        with _lock:
            try:
                if algorithm == "ecdsa-p256":
                    params = self.session.create_domain_parameters(
                        KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")}, local=True)
                    pub, priv = params.generate_keypair(store=True, label=temp_label, public_template=public,
                                                        private_template=private)
                elif algorithm.startswith("rsa-"):
                    pub, priv = self.session.generate_keypair(KeyType.RSA, int(algorithm[4:]), store=True, label=temp_label,
                                                              public_template=public, private_template=private)
                else:
                    raise BundleError(f"unsupported key algorithm {algorithm!r}")
                key = _wrap(priv, _public_key(pub))
                # Named after the public key: the reference on disk then says which key it is.
                for obj in (pub, priv):
                    obj[Attribute.LABEL] = key.label
                    obj[Attribute.ID] = key.label.encode()
            except pkcs11.PKCS11Error as exc:
                raise BundleError(f"PKCS#11 token {self.token_label!r}: cannot generate a {algorithm} key: "
                                  f"{type(exc).__name__}") from None
        return key

    def private_key(self, label: str, what: str):
        import pkcs11
        from pkcs11 import Attribute, ObjectClass

        with _lock:
            try:
                privs = list(self.session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: label}))
                pubs = list(self.session.get_objects({Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.LABEL: label}))
            except pkcs11.PKCS11Error as exc:
                raise BundleError(f"{what}: PKCS#11 token {self.token_label!r}: {type(exc).__name__}") from None
        if len(privs) != 1 or len(pubs) != 1:
            raise BundleError(f"{what}: the PKCS#11 token {self.token_label!r} holds no key labelled {label!r} "
                              "(another token, or the key was deleted)")
        key = _wrap(privs[0], _public_key(pubs[0]))
        if key.label != label:
            raise BundleError(f"{what}: the token's key labelled {label!r} is another key than its label says")
        return key

    # ---- the KEK

    def kek(self, label: str, create: bool) -> "TokenKek | None":
        import pkcs11
        from pkcs11 import Attribute, KeyType, ObjectClass

        with _lock:
            found = list(self.session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: label}))
            if len(found) > 1:
                raise BundleError(f"PKCS#11 token {self.token_label!r} holds {len(found)} keys labelled {label!r}")
            if found:
                return TokenKek(found[0], label)
            if not create:
                return None
            key_id = os.urandom(8)
            template = {Attribute.EXTRACTABLE: False, Attribute.SENSITIVE: True, Attribute.ID: key_id,
                        Attribute.ENCRYPT: True, Attribute.DECRYPT: True}
            try:
                key = self.session.generate_key(KeyType.AES, 256, store=True, label=label, template=template)
            except pkcs11.PKCS11Error as exc:
                raise BundleError(f"PKCS#11 token {self.token_label!r}: cannot generate the KEK: {type(exc).__name__}") from None
            return TokenKek(key, label)


class TokenKek:
    """The data keys' KEK inside the token: AES-256-GCM by C_Encrypt / C_Decrypt."""

    def __init__(self, key, label: str):
        from pkcs11 import Attribute

        self._key = key
        self.kek_id = f"pkcs11:{label}:{bytes(key[Attribute.ID]).hex()}"

    def wrap(self, plain: bytes, aad: bytes) -> bytes:
        import pkcs11

        nonce = os.urandom(NONCE_BYTES)
        with _lock:
            sealed = self._key.encrypt(plain, mechanism=pkcs11.Mechanism.AES_GCM,
                                       mechanism_param=pkcs11.GCMParams(nonce, aad, 128))
        return nonce + bytes(sealed)

    def destroy(self) -> None:
        """C_DestroyObject: the key is gone from the token (what it wrapped opens no more)."""
        import pkcs11

        try:
            with _lock:
                self._key.destroy()
        except pkcs11.PKCS11Error as exc:
            raise BundleError(f"PKCS#11: cannot destroy the key {self.kek_id!r}: {type(exc).__name__}") from None

    def unwrap(self, blob: bytes, aad: bytes) -> bytes:
        import pkcs11

        try:
            with _lock:
                return bytes(self._key.decrypt(blob[NONCE_BYTES:], mechanism=pkcs11.Mechanism.AES_GCM,
                                               mechanism_param=pkcs11.GCMParams(blob[:NONCE_BYTES], aad, 128)))
        except pkcs11.PKCS11Error:
            raise UnwrapError("does not unwrap") from None


class TokenKeks:
    """One AES KEK per namespace inside the token, labelled `<kek_label>:<namespace>` (and
    `<kek_label>:_legacy` for the pre-v2 ring), each CKA_EXTRACTABLE=false and CKA_SENSITIVE=true:
    the key for `orders` unwraps nothing of `payments`. `single()` is the bundle-wide KEK
    labelled `<kek_label>` a bundle had before per-namespace custody."""

    def __init__(self, session: TokenSession, base_label: str):
        self.session, self.base_label = session, base_label

    def label(self, namespace: str) -> str:
        from .kek import key_name

        return f"{self.base_label}:{key_name(namespace)}"

    def files(self, namespace: str) -> tuple:
        return ()

    def kek(self, namespace: str) -> "TokenKek | None":
        return self.session.kek(self.label(namespace), create=False)

    def create(self, namespace: str):
        return self.session.kek(self.label(namespace), create=True), None

    def single(self) -> "TokenKek | None":
        return self.session.kek(self.base_label, create=False)


# --------------------------------------------------------------------------- keys for cryptography


def label_for(public_key) -> str:
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return LABEL_PREFIX + hashlib.sha256(der).hexdigest()[:40]


def reference(label: str, algorithm: str) -> bytes:
    """What the bundle stores where a PEM private key would be: the key's label, nothing secret."""
    doc = {"pkcs11_label": label, "algorithm": algorithm}
    return REFERENCE_HEADER + (json.dumps(doc, sort_keys=True) + "\n").encode()


def parse_reference(data: bytes, what: str) -> str:
    try:
        doc = json.loads(data[len(REFERENCE_HEADER):])
        label = doc["pkcs11_label"]
    except (ValueError, KeyError, TypeError):
        raise BundleError(f"{what}: unreadable PKCS#11 key reference") from None
    if not isinstance(label, str) or not label.startswith(LABEL_PREFIX):
        raise BundleError(f"{what}: unreadable PKCS#11 key reference")
    return label


class _TokenKey:
    """Shared by the EC and RSA adapters: the token object, its public key, no private bytes."""

    def __init__(self, handle, public):
        self._handle, self._public = handle, public
        self.label = label_for(public)

    def public_key(self):
        return self._public

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def reference(self) -> bytes:
        algorithm = "ecdsa-p256" if isinstance(self._public, ec.EllipticCurvePublicKey) else f"rsa-{self.key_size}"
        return reference(self.label, algorithm)

    def _refuse(self, *args, **kwargs):
        raise BundleError("this private key is inside the PKCS#11 token and cannot be exported")

    private_bytes = private_numbers = _refuse

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    def _sign(self, mechanism, data: bytes) -> bytes:
        import pkcs11

        try:
            with _lock:
                return bytes(self._handle.sign(data, mechanism=mechanism))
        except pkcs11.PKCS11Error as exc:
            raise BundleError(f"the PKCS#11 token refused to sign: {type(exc).__name__}") from None


class TokenECKey(_TokenKey, ec.EllipticCurvePrivateKey):
    @property
    def curve(self):
        return self._public.curve

    def exchange(self, algorithm, peer_public_key):
        raise BundleError("token keys only sign")

    def sign(self, data: bytes, signature_algorithm) -> bytes:
        import pkcs11

        algorithm = signature_algorithm.algorithm
        if isinstance(algorithm, Prehashed):
            digest = data
        else:
            hasher = hashes.Hash(algorithm)
            hasher.update(data)
            digest = hasher.finalize()
        raw = self._sign(pkcs11.Mechanism.ECDSA, digest)  # r || s, each the curve's size
        half = len(raw) // 2
        return encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))


class TokenRSAKey(_TokenKey, rsa.RSAPrivateKey):
    def decrypt(self, ciphertext, padding_):
        raise BundleError("token keys only sign")

    def sign(self, data: bytes, padding_, algorithm) -> bytes:
        import pkcs11

        if not isinstance(padding_, padding.PKCS1v15) or not isinstance(algorithm, hashes.SHA256):
            raise BundleError("token RSA keys sign with PKCS#1 v1.5 and SHA-256 only")
        return self._sign(pkcs11.Mechanism.SHA256_RSA_PKCS, data)


def _public_key(pub):
    from pkcs11 import Attribute, KeyType

    if pub.key_type == KeyType.EC:
        from pkcs11.util.ec import encode_ec_public_key

        return serialization.load_der_public_key(bytes(encode_ec_public_key(pub)))
    modulus = int.from_bytes(bytes(pub[Attribute.MODULUS]), "big")
    exponent = int.from_bytes(bytes(pub[Attribute.PUBLIC_EXPONENT]), "big")
    return rsa.RSAPublicNumbers(exponent, modulus).public_key()


def _wrap(priv, public):
    return TokenECKey(priv, public) if isinstance(public, ec.EllipticCurvePublicKey) else TokenRSAKey(priv, public)


# --------------------------------------------------------------------------- the process's token

_CURRENT: list = [None]


def activate(session: "TokenSession | None") -> None:
    """The token key references resolve against (backend.activate sets it from bundle.yaml)."""
    _CURRENT[0] = session


def resolve(data: bytes, what: str):
    label = parse_reference(data, what)
    if _CURRENT[0] is None:
        raise BundleError(f"{what} is a PKCS#11 key reference, but keys.backend is not pkcs11 in bundle.yaml")
    return _CURRENT[0].private_key(label, what)


# --------------------------------------------------------------------------- opening the token


def open_session(module: str, token_label: str, pin_file: str) -> TokenSession:
    """Each failure is one clear error: missing module, no such token, unreadable PIN, wrong PIN."""
    try:
        import pkcs11
    except ImportError:
        raise BundleError("keys.backend pkcs11 needs the python-pkcs11 package (pip install python-pkcs11)") from None
    if not Path(module).is_file():
        raise BundleError(f"keys.pkcs11.module {module}: no such file (install the PKCS#11 library, e.g. softhsm2)")
    pin = read_secret(pin_file, "keys.pkcs11.pin_file")
    cached = _SESSIONS.get((module, token_label))
    if cached is not None:
        # PKCS#11 logs the whole process in; the PIN that did it is the one to compare with.
        if cached[1] != hashlib.sha256(pin.encode()).digest():
            raise BundleError(f"PKCS#11 token {token_label!r}: wrong PIN (from {pin_file})")
        return cached[0]
    try:
        lib = pkcs11.lib(module)
    except Exception as exc:  # noqa: BLE001 - a library that will not load raises many kinds
        raise BundleError(f"keys.pkcs11.module {module}: not a loadable PKCS#11 library ({type(exc).__name__})") from None
    try:
        token = lib.get_token(token_label=token_label)
    except pkcs11.NoSuchToken:
        raise BundleError(f"no PKCS#11 token labelled {token_label!r} in {module}") from None
    except pkcs11.MultipleTokensReturned:
        raise BundleError(f"more than one PKCS#11 token labelled {token_label!r} in {module}") from None
    try:
        session = token.open(user_pin=pin, rw=True)
    except pkcs11.PinIncorrect:
        raise BundleError(f"PKCS#11 token {token_label!r}: wrong PIN (from {pin_file})") from None
    except pkcs11.PinLocked:
        raise BundleError(f"PKCS#11 token {token_label!r}: the PIN is locked") from None
    except pkcs11.PKCS11Error as exc:
        raise BundleError(f"PKCS#11 token {token_label!r}: cannot log in: {type(exc).__name__}") from None
    opened = TokenSession(session, token_label)
    _SESSIONS[(module, token_label)] = (opened, hashlib.sha256(pin.encode()).digest())
    return opened


_SESSIONS: dict[tuple[str, str], tuple[TokenSession, bytes]] = {}
