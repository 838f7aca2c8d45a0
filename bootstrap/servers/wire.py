"""The codec protocol's body, proto3 JSON of temporal.api.common.v1.Payloads, read and written
directly: {"payloads": [{"metadata": {key: base64}, "data": base64}]}. protobuf's generic JSON
conversion cost more than the decryption itself.

Reads what proto3 JSON allows here: base64 in the standard or URL-safe alphabet, padding
optional, null for an absent field, unknown fields ignored. Writes standard padded base64 with
empty fields left out, and `{}` for no payloads, as json_format does. A payload that passes
through unchanged is echoed as the caller sent it (after checking its base64).
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from dataclasses import dataclass

from google.protobuf import json_format
from temporalio.api.common.v1 import Payload

from .events import Refusal

MAX_PAYLOADS = 20_000
# json.loads builds one Python object per JSON value, and every value but the document itself
# follows "[", ":" or ",", every object key "{" or ",": counting those four bytes (memchr speed)
# before parsing bounds what any body can make it build, whatever its shape. A value costs at
# most ~100 bytes (an empty dict: 64, its GC header and its slot in a list), so a body's objects
# stay under 26 MB. A payload in proto3 JSON takes about a dozen (its object, "metadata" and its
# object, three metadata pairs, "data", the separators): MAX_PAYLOADS of them fit.
MAX_VALUES = 13 * MAX_PAYLOADS
# Base64 and JSON punctuation are ASCII; only a metadata key could legitimately be anything else.
# A non-ASCII body decodes to a str of up to 4 bytes per character, so it is held to a quarter.
MAX_NON_ASCII_BODY = 1024 * 1024
_URLSAFE = bytes.maketrans(b"-_", b"+/")


def _bad(why: str) -> Refusal:
    return Refusal(400, f"body is not proto3 JSON of Payloads: {why}")


def b64(text) -> bytes:
    if not isinstance(text, str):
        raise _bad("bytes fields must be base64 strings")
    if not text.isascii():  # before any copy: a non-ASCII str takes up to 4 bytes a character
        raise _bad("invalid base64")
    if not _padding_completes_a_group(text):
        raise _bad("invalid base64")
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        pass
    standard = text.encode().translate(_URLSAFE)
    try:
        return binascii.a2b_base64(standard + b"=" * (-len(standard) % 4), strict_mode=True)
    except (binascii.Error, ValueError):
        raise _bad("invalid base64") from None


def _padding_completes_a_group(text: str) -> bool:
    """Go's protojson, the frontend's parser, takes "=" only where it completes the last group of
    four; binascii's strict mode also takes padding after a complete group ("QUJD=")."""
    tail = text[-3:]
    pads = len(tail) - len(tail.rstrip("="))
    return pads == 0 or (pads <= 2 and len(text) % 4 == 0)


# Metadata values repeat across a batch (encoding, key id, namespace): decode each once.
_metadata_value = functools.lru_cache(maxsize=4096)(b64)
_key_json = functools.lru_cache(maxsize=4096)(json.dumps)


@dataclass(slots=True)
class Item:
    """One payload as sent: metadata values and data still base64."""

    metadata: dict
    data: str

    def field(self, key: str) -> bytes | None:
        value = self.metadata.get(key)
        return None if value is None else _metadata_value(value) if len(value) <= 128 else b64(value)

    def payload(self) -> Payload:
        return Payload(metadata={k: b64(v) for k, v in self.metadata.items()}, data=b64(self.data))

    def check(self) -> None:
        for value in self.metadata.values():
            b64(value)
        b64(self.data)

    def json(self) -> bytes:
        """As sent; after check(), so every value is base64, which JSON needs no escape for."""
        metadata = ",".join(f'{_key_json(k)}:"{v}"' for k, v in self.metadata.items()).encode()
        return _object(metadata, self.data.encode())


def _item(raw) -> Item:
    if not isinstance(raw, dict):
        raise _bad("each payload must be an object")
    metadata, data = raw.get("metadata") or {}, raw.get("data") or ""
    if not isinstance(metadata, dict):
        raise _bad("metadata must be an object")
    if not isinstance(data, str) or not all(isinstance(v, str) for v in metadata.values()):
        raise _bad("bytes fields must be base64 strings")
    return Item(metadata, data)


def count_values(body: bytes) -> int:
    """At least the number of JSON values and object keys in body (see MAX_VALUES)."""
    return body.count(b"[") + body.count(b"{") + body.count(b",") + body.count(b":")


def check_size(body: bytes) -> None:
    """Refuses (413) a body that json.loads could blow up beyond a fixed multiple of its size."""
    values = count_values(body)
    if values > MAX_VALUES:
        raise Refusal(413, f"more than {MAX_VALUES} JSON values (at most {MAX_PAYLOADS} payloads)")
    if len(body) > MAX_NON_ASCII_BODY and not body.isascii():
        raise Refusal(413, f"a body with non-ASCII bytes may be {MAX_NON_ASCII_BODY} bytes at most")


def parse_items(body: bytes) -> list[Item]:
    check_size(body)
    try:
        doc = json.loads(body)
    except RecursionError:
        raise _bad("nested too deeply") from None
    except (ValueError, UnicodeDecodeError):
        raise _bad("not JSON") from None
    if not isinstance(doc, dict):
        raise _bad("expected an object")
    raw_items = doc.get("payloads") or []
    if not isinstance(raw_items, list):
        raise _bad("payloads must be a list")
    if len(raw_items) > MAX_PAYLOADS:
        raise Refusal(413, f"more than {MAX_PAYLOADS} payloads")
    return [_item(raw) for raw in raw_items]


def parse_payloads(body: bytes) -> list[Payload]:
    return [item.payload() for item in parse_items(body)]


def payload_json(payload: Payload) -> bytes:
    if len(payload.ListFields()) > bool(payload.metadata) + bool(payload.data):  # a field this path does not know
        return json_format.MessageToJson(payload, indent=None).encode()
    metadata = ",".join(f'{_key_json(k)}:"{base64.b64encode(v).decode()}"' for k, v in payload.metadata.items())
    return _object(metadata.encode(), base64.b64encode(payload.data))


def _object(metadata: bytes, data: bytes) -> bytes:
    """A payload's JSON from its metadata pairs and its data, both already JSON, in one allocation."""
    pieces = [b"{"]
    if metadata:
        pieces += (b'"metadata":{', metadata, b"}")
    if data:
        pieces += (b"," if metadata else b"", b'"data":"', data, b'"')
    pieces.append(b"}")
    return b"".join(pieces)


def render(parts: list[bytes]) -> bytes:
    """The body for payloads already rendered by payload_json() or Item.json(), built in one
    allocation (a batch's reply is as large as its body)."""
    if not parts:
        return b"{}"
    pieces = [b'{"payloads":[']
    for part in parts:
        pieces += (part, b",")
    pieces[-1] = b"]}"
    return b"".join(pieces)


def render_payloads(payloads: list[Payload]) -> bytes:
    return render([payload_json(p) for p in payloads])
