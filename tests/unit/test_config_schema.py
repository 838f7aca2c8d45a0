"""bundle.schema.json (the JSON Schema editors validate bundle.yaml with) says what the parser says:
the same keys, and it refuses what the parser refuses for a wrong key or type.

The schema is checked with a small validator for exactly the subset config_schema emits (type,
properties, additionalProperties, items, enum, minimum, maximum, pattern): jsonschema is not among
the test dependencies."""

from __future__ import annotations

import copy
import functools
import json
import re
import subprocess
import sys

import pytest
from hypothesis import given, settings, strategies as st

from bootstrap.core.config import parse_config
from bootstrap.errors import BundleError
from bootstrap.ops.config_schema import SCHEMA_FILE, schema_text
from tests.support.config_keys import EXAMPLE, accepted_keys, example_variants
from tests.support.paths import REPO

TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None), "number": (int, float)}
EMITTED = {"$schema", "title", "description", "default", "type", "properties", "additionalProperties", "items", "enum",
           "minimum", "maximum", "pattern"}


@functools.cache
def schema() -> dict:
    return json.loads(SCHEMA_FILE.read_text())


@functools.cache
def switched_on() -> tuple[dict, ...]:
    return tuple(example_variants())


def _is(value, kind: str) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, TYPES[kind])


def errors(value, rule: dict, path: str = "$") -> list[str]:
    assert set(rule) <= EMITTED, f"{path}: the test validator does not know {set(rule) - EMITTED}"
    kinds = rule.get("type", [])
    kinds = [kinds] if isinstance(kinds, str) else kinds
    if kinds and not any(_is(value, kind) for kind in kinds):
        return [f"{path}: {value!r} is not {kinds}"]
    if "enum" in rule and value not in rule["enum"]:
        return [f"{path}: {value!r} not in {rule['enum']}"]
    found = []
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < rule.get("minimum", value) or value > rule.get("maximum", value):
            found.append(f"{path}: {value} out of range")
    if isinstance(value, str) and "pattern" in rule and not re.search(rule["pattern"], value):
        found.append(f"{path}: {value!r} does not match {rule['pattern']}")
    if isinstance(value, list) and "items" in rule:
        for index, item in enumerate(value):
            found += errors(item, rule["items"], f"{path}[{index}]")
    if isinstance(value, dict):
        for key, item in value.items():
            if key in rule.get("properties", {}):
                found += errors(item, rule["properties"][key], f"{path}.{key}")
            elif rule.get("additionalProperties") is False:
                found.append(f"{path}: unknown key {key!r}")
            elif isinstance(rule.get("additionalProperties"), dict):
                found += errors(item, rule["additionalProperties"], f"{path}.{key}")
    return found


def schema_keys(rule: dict, path: str = "") -> set[str]:
    """Every key path the schema names, list items adding no segment, named entries as '*'."""
    found = set()
    for key, sub in rule.get("properties", {}).items():
        key_path = f"{path}.{key}" if path else key
        found |= {key_path} | schema_keys(sub, key_path)
    if isinstance(rule.get("additionalProperties"), dict):
        found |= {f"{path}.*"} | schema_keys(rule["additionalProperties"], f"{path}.*")
    if "items" in rule:
        found |= schema_keys(rule["items"], path)
    return found


def test_the_committed_schema_is_what_the_command_prints():
    printed = subprocess.run([sys.executable, "-c", "import sys; from bootstrap.cli import main; "
                              "sys.exit(main(['config-schema']))"], cwd=REPO, capture_output=True, text=True, check=True)
    assert printed.stdout == SCHEMA_FILE.read_text() == schema_text(), "run: temporal-bundle config-schema > bundle.schema.json"


def test_the_schema_names_exactly_the_keys_the_parser_accepts():
    assert schema_keys(schema()) == accepted_keys()


def test_the_example_points_editors_to_the_schema():
    assert EXAMPLE.read_text().splitlines()[0] == "# yaml-language-server: $schema=./bundle.schema.json"


def test_the_example_as_shipped_and_switched_on_validates():
    import yaml
    for document in [yaml.safe_load(EXAMPLE.read_text()), *example_variants()]:
        assert errors(document, schema()) == []


def _changed(path: str, value):
    config = copy.deepcopy(example_variants()[0])
    *parents, last = path.split(".")
    target = config
    for key in parents:
        target = target[key][0] if isinstance(target[key], list) else target[key]
    target[last] = value
    return config


REFUSED = [
    ("bogus", 1),
    ("network.bogus_port", 1),
    ("oidc.users.bogus", "x"),
    ("workload_identity.issuers.bogus", "x"),
    ("roles.worker.bogus", "x"),
    ("network.frontend_port", "7233"),
    ("network.frontend_port", 70000),
    ("oidc.enabled", "yes"),
    ("persistence.driver", "mysql"),
    ("persistence.num_history_shards", 0),
    ("cluster", []),
    ("namespaces", {"name": "default"}),
    ("pki.ca_lifetime", "ten years"),
    ("codec.sans", "codec.example.com"),
    ("workload_identity.issuers.issuer", "http://kubernetes.default.svc"),
    ("kubernetes.replicas.history", "2"),
]


@pytest.mark.parametrize(("path", "value"), REFUSED, ids=[f"{p}={v!r}" for p, v in REFUSED])
def test_what_the_parser_refuses_the_schema_refuses(path, value):
    config = _changed(path, value)
    with pytest.raises(BundleError):
        parse_config(config)
    assert errors(config, schema()), f"the schema accepts {path}: {value!r}"


def test_the_validator_refuses_an_unknown_key():
    """The check above can fail: the validator itself sees an unknown key."""
    assert errors({"bogus": 1}, {"type": "object", "properties": {}, "additionalProperties": False})


def test_a_broken_example_is_one_error_line(tmp_path):
    broken = tmp_path / "example.yaml"
    broken.write_text("cluster:\n  # name: [unclosed\n")
    for example in (broken, tmp_path / "missing.yaml"):
        run = subprocess.run([sys.executable, "-c", "import sys; from bootstrap.cli import main; "
                              f"sys.exit(main(['config-schema', '--example', {str(example)!r}]))"],
                             cwd=REPO, capture_output=True, text=True)
        assert (run.returncode, run.stdout) == (1, "")
        assert run.stderr.startswith("error: ") and run.stderr.count("\n") == 1, run.stderr


def _leaves(value, path=()):
    """Every (path, value) below a document, list items by index."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    found = []
    for key, item in items:
        found += [((*path, key), item), *_leaves(item, (*path, key))]
    return found


def _replaced(document, path, value):
    document = copy.deepcopy(document)
    target = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return document


VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 70000), st.floats(0, 2), st.sampled_from(
    ["", "x", "7d", "30s", "https://idp.example.com", "/run/secret", "sqlite", "ecdsa-p256", "default:write"]),
    st.lists(st.sampled_from(["a", "default:read"]), max_size=2), st.just({}))


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_whatever_the_parser_accepts_the_schema_accepts(data):
    """Fuzz: one value of a switched-on example replaced by another; if the parser takes the
    result, the schema must too (the schema may refuse more: it cannot express every semantic check)."""
    variants = switched_on()
    document = variants[data.draw(st.integers(0, len(variants) - 1))]
    leaves = _leaves(document)
    path, value = data.draw(st.sampled_from(leaves))
    # Mostly values of the same type taken from elsewhere in the example, so that the parser often accepts.
    alike = [other for _, other in leaves if type(other) is type(value)]
    changed = _replaced(document, path, data.draw(st.one_of(st.sampled_from(alike), VALUES)))
    try:
        parse_config(changed)
    except BundleError:
        return
    assert errors(changed, schema()) == []

