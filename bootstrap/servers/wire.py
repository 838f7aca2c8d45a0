"""The codec protocol's body, proto3 JSON of temporal.api.common.v1.Payloads, read and written
directly: {"payloads": [{"metadata": {key: base64}, "data": base64}]}. protobuf's generic JSON
conversion cost more than the decryption itself.

Reads what proto3 JSON allows here: base64 in the standard or URL-safe alphabet, padding
optional, null for an absent field, unknown fields ignored. Writes what json_format writes:
standard padded base64, empty fields left out, `{}` for no payloads.
"""

from __future__ import annotations

import base64
import binascii
import json

from google.protobuf import json_format
from temporalio.api.common.v1 import Payload

from .http import Refusal

MAX_PAYLOADS = 20_000
_URLSAFE = str.maketrans("-_", "+/")


def _bad(why: str) -> Refusal:
    return Refusal(400, f"body is not proto3 JSON of Payloads: {why}")


def _bytes(text) -> bytes:
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


def _payload(item) -> Payload:
    if not isinstance(item, dict):
        raise _bad("each payload must be an object")
    metadata = item.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise _bad("metadata must be an object")
    return Payload(metadata={k: _bytes(v) for k, v in metadata.items()}, data=_bytes(item.get("data") or ""))


def parse_payloads(body: bytes) -> list[Payload]:
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
    items = doc.get("payloads") or []
    if not isinstance(items, list):
        raise _bad("payloads must be a list")
    return [_payload(item) for item in items]


def _render(payload: Payload) -> dict:
    fields = {}
    if payload.metadata:
        fields["metadata"] = {k: base64.b64encode(v).decode() for k, v in payload.metadata.items()}
    if payload.data:
        fields["data"] = base64.b64encode(payload.data).decode()
    if len(payload.ListFields()) > len(fields):  # a field this fast path does not know
        return json_format.MessageToDict(payload)
    return fields


def render_payloads(payloads: list[Payload]) -> bytes:
    if not payloads:
        return b"{}"
    return json.dumps({"payloads": [_render(p) for p in payloads]}, separators=(",", ":")).encode()
