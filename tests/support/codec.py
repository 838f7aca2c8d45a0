"""Payloads as older releases of the codec wrote them, for the tests that check they still decrypt
and cannot be passed off as something else."""

from __future__ import annotations

import os

from temporalio.api.common.v1 import Payload

from bootstrap.core.codec import ENCODING, KEY_ID_HEADER
from bootstrap.core.codec_keys import Keyring


def legacy_encrypt(payload: Payload, keyring: Keyring) -> Payload:
    """What encrypt() wrote before payloads were bound to a namespace (associated data without the namespace), verbatim."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key_id, nonce = keyring.active, os.urandom(12)
    sealed = AESGCM(keyring.keys[key_id]).encrypt(nonce, payload.SerializeToString(), ENCODING + b"\x00" + key_id.encode())
    return Payload(metadata={"encoding": ENCODING, KEY_ID_HEADER: key_id.encode()}, data=nonce + sealed)
