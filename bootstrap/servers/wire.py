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
_URLSAFE = str.maketrans("-_", "+/")


def _bad(why: str) -> Refusal:
    return Refusal(400, f"body is not proto3 JSON of Payloads: {why}")


def b64(text) -> bytes:
    if not isinstance(text, str):
        raise _bad("bytes fields must be base64 strings")
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        pass
    padded = text.translate(_URLSAFE) + "=" * (-len(text) % 4)
    try:
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        raise _bad("invalid base64") from None


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

    def json(self) -> str:
        parts = []
        if self.metadata:
            parts.append('"metadata":' + json.dumps(self.metadata, separators=(",", ":")))
        if self.data:
            parts.append('"data":' + json.dumps(self.data))
        return "{" + ",".join(parts) + "}"


def _item(raw) -> Item:
    if not isinstance(raw, dict):
        raise _bad("each payload must be an object")
    metadata, data = raw.get("metadata") or {}, raw.get("data") or ""
    if not isinstance(metadata, dict):
        raise _bad("metadata must be an object")
    if not isinstance(data, str) or not all(isinstance(v, str) for v in metadata.values()):
        raise _bad("bytes fields must be base64 strings")
    return Item(metadata, data)


def parse_items(body: bytes) -> list[Item]:
    # Counting braces first bounds the objects json.loads may build: a body of 16 MiB of "{}"
    # would otherwise become millions of dicts, hundreds of MB, before a single check.
    if body.count(b"{") > 2 * MAX_PAYLOADS + 1:
        raise Refusal(413, f"more than {MAX_PAYLOADS} payloads")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise _bad("not JSON") from None
    if not isinstance(doc, dict):
        raise _bad("expected an object")
    raw_items = doc.get("payloads") or []
    if not isinstance(raw_items, list):
        raise _bad("payloads must be a list")
    return [_item(raw) for raw in raw_items]


def parse_payloads(body: bytes) -> list[Payload]:
    return [item.payload() for item in parse_items(body)]


def payload_json(payload: Payload) -> str:
    fields = []
    if payload.metadata:
        pairs = ",".join(f'{_key_json(k)}:"{base64.b64encode(v).decode()}"' for k, v in payload.metadata.items())
        fields.append('"metadata":{' + pairs + "}")
    if payload.data:
        fields.append('"data":"' + base64.b64encode(payload.data).decode() + '"')
    if len(payload.ListFields()) > len(fields):  # a field this fast path does not know
        return json_format.MessageToJson(payload, indent=None)
    return "{" + ",".join(fields) + "}"


def render(parts: list[str]) -> bytes:
    """The body for payloads already rendered by payload_json() or Item.json()."""
    return ('{"payloads":[' + ",".join(parts) + "]}").encode() if parts else b"{}"


def render_payloads(payloads: list[Payload]) -> bytes:
    return render([payload_json(p) for p in payloads])
