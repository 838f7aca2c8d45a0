"""The one audit line every service writes (servers/events.audit): its keys, and that nothing a
caller sends can add a line or a key of its own."""

from __future__ import annotations

import json

from bootstrap.servers.events import AUDIT_SCHEMA, CLIP, audit

KEYS = ["time", "event", "schema", "service", "action", "outcome", "status", "principal", "namespace", "remote"]


def lines(capfd) -> list[dict]:
    return [json.loads(line) for line in capfd.readouterr().err.splitlines()]


def test_every_line_carries_the_schema_keys_in_order_and_then_the_details(capfd):
    audit("codec", "decode", "decrypted", 200, principal="temporal-bundle:worker", namespace="orders",
          remote="10.0.0.7", decrypted=3)
    [line] = lines(capfd)
    assert list(line) == KEYS + ["decrypted"]
    assert (line["event"], line["schema"], line["service"], line["principal"]) == (
        "audit", AUDIT_SCHEMA, "codec", "temporal-bundle:worker")


def test_unknown_parts_are_left_out_not_written_as_null(capfd):
    audit("key-service", "fetch", "refused", 401, principal=None, reason="a client certificate is required")
    [line] = lines(capfd)
    assert "principal" not in line and "namespace" not in line and line["reason"].startswith("a client")


def test_a_principal_or_namespace_from_a_token_cannot_forge_a_line_or_grow_without_bound(capfd):
    forged = '"}\n{"event":"audit","service":"codec","principal":"temporal-bundle:system"}'
    audit("ui-gate", "ListNamespaces", "answered", 200, principal=forged + "x" * 1000, namespace=forged)
    [line] = lines(capfd)
    assert line["principal"].startswith(forged) and len(line["principal"]) == CLIP + 3
    assert line["namespace"] == forged
