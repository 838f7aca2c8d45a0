"""The codec body's bounds and shape, pinned to the byte (mutmut 3, scripts/mutation.sh wire): the
value and size limits at their exact edge, every refusal's status and words, strict base64 in
both alphabets, and the JSON written back. Each case kills a mutant the other codec tests let live."""

from __future__ import annotations

import json

import pytest
from temporalio.api.common.v1 import Payload

from bootstrap.servers import wire
from bootstrap.servers.events import Refusal
from bootstrap.servers.wire import (MAX_NON_ASCII_BODY, MAX_PAYLOADS, MAX_VALUES, Item, b64, check_size, count_values,
                                    parse_items, parse_payloads, payload_json, render, render_payloads)

BAD = "body is not proto3 JSON of Payloads: "


def refused(call, *args) -> tuple[int, str]:
    with pytest.raises(Refusal) as refusal:
        call(*args)
    return refusal.value.status, refusal.value.message


# --------------------------------------------------------------------------- size bounds


def test_count_values_counts_each_opening_bracket_comma_and_colon():
    assert count_values(b'{"a":[1,2],"b":{}}') == 7
    assert count_values(b'"[{,:]}"') == 4  # inside strings too: an upper bound, never an undercount


def test_the_value_bound_holds_at_its_exact_edge():
    check_size(b"," * MAX_VALUES)
    assert refused(check_size, b"," * (MAX_VALUES + 1)) == (
        413, f"more than {MAX_VALUES} JSON values (at most {MAX_PAYLOADS} payloads)")


def test_the_non_ascii_bound_holds_at_its_exact_edge_and_spares_ascii():
    check_size(b"\xff" + b"a" * (MAX_NON_ASCII_BODY - 1))
    check_size(b"a" * (MAX_NON_ASCII_BODY + 1))
    assert refused(check_size, b"\xff" + b"a" * MAX_NON_ASCII_BODY) == (
        413, f"a body with non-ASCII bytes may be {MAX_NON_ASCII_BODY} bytes at most")


def test_the_payload_bound_holds_at_its_exact_edge():
    def body(n: int) -> bytes:
        return b'{"payloads":[' + b",".join([b"{}"] * n) + b"]}"

    assert len(parse_items(body(MAX_PAYLOADS))) == MAX_PAYLOADS
    assert refused(parse_items, body(MAX_PAYLOADS + 1)) == (413, f"more than {MAX_PAYLOADS} payloads")


def test_parse_items_checks_the_size_first():
    assert refused(parse_items, b"[" * (MAX_VALUES + 1))[0] == 413


# --------------------------------------------------------------------------- document shape


@pytest.mark.parametrize("body, why", [
    (b"[" * 100_000, "nested too deeply"),
    (b"{", "not JSON"),
    (b'"\xff"', "not JSON"),
    (b"[]", "expected an object"),
    (b'{"payloads": {"a": 1}}', "payloads must be a list"),
    (b'{"payloads": [1]}', "each payload must be an object"),
    (b'{"payloads": [{"metadata": [1]}]}', "metadata must be an object"),
    (b'{"payloads": [{"data": 1}]}', "bytes fields must be base64 strings"),
    (b'{"payloads": [{"metadata": {"k": 1}}]}', "bytes fields must be base64 strings"),
])
def test_each_malformed_body_is_a_400_naming_what_is_wrong(body, why):
    assert refused(parse_items, body) == (400, BAD + why)


@pytest.mark.parametrize("body", [b"{}", b'{"payloads": null}', b'{"payloads": []}', b'{"other": 1}'])
def test_no_payloads_is_an_empty_list(body):
    assert parse_items(body) == []


def test_null_fields_are_absent_fields():
    [item] = parse_items(b'{"payloads": [{"metadata": null, "data": null}]}')
    assert (item.metadata, item.data) == ({}, "")
    assert parse_payloads(b'{"payloads": [{"metadata": {"k": "dg=="}, "data": "ZA=="}]}') == [
        Payload(metadata={"k": b"v"}, data=b"d")]


# --------------------------------------------------------------------------- base64


@pytest.mark.parametrize("text, raw", [
    ("QUJD", b"ABC"), ("QUI=", b"AB"), ("QUI", b"AB"), ("QQ==", b"A"), ("QQ", b"A"), ("", b""),
    ("-_-_", b"\xfb\xff\xbf"), ("-w", b"\xfb"), ("_w==", b"\xff"), ("-_8", b"\xfb\xff"),
])
def test_base64_in_either_alphabet_with_or_without_padding(text, raw):
    assert b64(text) == raw


@pytest.mark.parametrize("text", ["QUJD!", "QU JD", "-_-_!", "Q", "QQ=x"])
def test_base64_with_stray_characters_is_refused_not_skipped(text):
    assert refused(b64, text) == (400, BAD + "invalid base64")


@pytest.mark.parametrize("text", ["QUJD=", "QUJD==", "QUJD===", "QUI==", "QQ===", "====", "_w===", "-_-_="])
def test_padding_that_completes_no_group_is_refused_as_temporal_refuses_it(text):
    # Go's protojson (the frontend's parser) takes "=" only where it completes the last group.
    assert refused(b64, text) == (400, BAD + "invalid base64")


@pytest.mark.parametrize("value", [None, 5, b"QUJD", ["QUJD"]])
def test_base64_fields_must_be_strings(value):
    assert refused(b64, value) == (400, BAD + "bytes fields must be base64 strings")


def test_non_ascii_base64_is_refused():
    assert refused(b64, "QUJDé") == (400, BAD + "invalid base64")


def test_item_fields_decode_short_and_long_values_and_none():
    long = "QUJD" * 40
    item = Item({"short": "QUJD", "long": long, "bad": "!!"}, "")
    assert (item.field("short"), item.field("long"), item.field("absent")) == (b"ABC", b"ABC" * 40, None)
    assert refused(item.field, "bad")[0] == 400
    Item({"k": "dg==", "e": "eA"}, "ZA==").check()
    with pytest.raises(Refusal):
        Item({"bad": "!!"}, "").check()
    with pytest.raises(Refusal):
        Item({}, "!!").check()


def test_only_short_metadata_values_are_kept_in_the_decode_cache():
    """The cache holds 4096 values: long ones would make it hold 4096 bodies' worth."""
    cache = wire._metadata_value
    cache.cache_clear()
    item = Item({"long": "QUJD" * 32 + "QQ==", "edge": "QUJD" * 32}, "")
    assert item.field("long") == b"ABC" * 32 + b"A" and cache.cache_info().currsize == 0
    assert item.field("edge") == b"ABC" * 32 and cache.cache_info().currsize == 1


# --------------------------------------------------------------------------- what is written back


def test_payload_json_is_compact_proto3_json_and_leaves_empty_fields_out():
    assert payload_json(Payload(metadata={"k": b"v"}, data=b"d")) == b'{"metadata":{"k":"dg=="},"data":"ZA=="}'
    two = payload_json(Payload(metadata={"k": b"v", "e": b"x"}))
    assert json.loads(two) == {"metadata": {"k": "dg==", "e": "eA=="}} and b" " not in two
    assert payload_json(Payload(metadata={"k": b"v"})) == b'{"metadata":{"k":"dg=="}}'
    assert payload_json(Payload(data=b"d")) == b'{"data":"ZA=="}'
    assert payload_json(Payload()) == b"{}"


def test_a_field_the_fast_path_does_not_know_goes_through_json_format():
    payload = Payload(data=b"d", external_payloads=[Payload.ExternalPayloadDetails(size_bytes=7)])
    written = payload_json(payload)
    assert json.loads(written) == {"data": "ZA==", "externalPayloads": [{"sizeBytes": "7"}]} and b"\n" not in written


def test_an_item_is_echoed_as_sent():
    body = b'{"payloads": [{"metadata": {"k\\"": "dg", "e": "eA=="}, "data": "ZA"}, {}]}'
    first, empty = parse_items(body)
    assert first.json() == b'{"metadata":{"k\\"":"dg","e":"eA=="},"data":"ZA"}'
    assert empty.json() == b"{}"


def test_render_writes_one_payloads_object():
    assert render([]) == b"{}"
    assert render([b"{}"]) == b'{"payloads":[{}]}'
    assert render([b"1", b"2"]) == b'{"payloads":[1,2]}'
    assert render_payloads([Payload(data=b"d"), Payload()]) == b'{"payloads":[{"data":"ZA=="},{}]}'
