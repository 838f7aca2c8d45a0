"""Fuzzing bundle.yaml (Hypothesis): parse_config on random documents built from the config's own
keys, load_config on mutations of bundle.example.yaml (as data and as text), and the CLI on a
sample. Whatever the input: a BundleConfig, or one BundleError (the CLI: exit 1 and one line
`error: ...`); never another exception, never a write (the config's directory stays
byte-identical).

Budgets (max_examples): random documents 300, mutated example data 600, mutated example text
200, CLI in-process 60; each test under 20 s here."""

from __future__ import annotations

import contextlib
import copy
import io
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from bootstrap.cli import main
from bootstrap.core.config import BundleConfig, load_config, parse_config
from bootstrap.errors import BundleError

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_TEXT = (REPO / "bundle.example.yaml").read_text()


def uncommented(text: str, dex: bool) -> str:
    """The example with every commented-out setting switched on: with the embedded Dex (the
    "## Alternative" block dropped) or with the external IdP (that block replacing Dex)."""
    if dex:
        text = re.sub(r"(?ms)^## Alternative[^\n]*\n.*?(?=^## )", "", text)
    return re.sub(r"(?m)^(\s*)# (?!#|yaml-language-server:)", r"\1", text)  # the modeline stays a comment


# The example as shipped, and with every section on (oidc with Dex, oidc with an external IdP):
# mutations start from a valid config that reaches every section parser.
BASE_TEXTS = [EXAMPLE_TEXT, uncommented(EXAMPLE_TEXT, dex=True), uncommented(EXAMPLE_TEXT, dex=False)]
BASES = [yaml.safe_load(text) for text in BASE_TEXTS]
# Every key the example names, set or commented out: random documents use the config's own words,
# so they get past the first unknown-key check into the section parsers.
KEYS = sorted(set(re.findall(r"^\s*(?:#\s?)?-?\s*([a-z_]+):", EXAMPLE_TEXT, re.MULTILINE)))

# What yaml.safe_load can hand to parse_config: besides JSON's types, dates, timestamps, bytes
# (!!binary), sets (!!set) and non-string keys.
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.integers(-5, 70000),
    st.floats(allow_nan=True), st.text(max_size=30), st.sampled_from(KEYS),
    st.sampled_from(["1h", "90d", "0d", "-1s", "7d", "https://example.com", "http://[::1", "default:write",
                     "temporal-system:admin", "/abs/path", "a" * 300, "", " ", "\x00", "*", "default"]),
    st.dates(), st.datetimes(), st.binary(max_size=8),
)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=8), st.integers(), st.booleans(), st.none())
documents = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5)
    | st.sets(st.sampled_from(KEYS), max_size=3),
    max_leaves=25,
)
top_level = st.dictionaries(st.sampled_from(KEYS), documents, max_size=6)


def parses_or_one_error(data) -> None:
    try:
        config = parse_config(data, "fuzz.yaml")
    except BundleError as exc:
        message = str(exc)
        assert message and "\n" not in message, message
        return
    assert isinstance(config, BundleConfig)


@settings(max_examples=300)
@given(data=st.one_of(documents, top_level))
def test_random_documents_parse_or_raise_one_bundle_error(data):
    parses_or_one_error(data)


def paths_of(node, prefix=()):
    """Every path into the document: dict keys and list indexes."""
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from paths_of(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from paths_of(value, (*prefix, index))


@st.composite
def mutated_example(draw):
    """bundle.example.yaml's data (one of BASES) with one to four changes: a value replaced, a key dropped or
    added, a list item duplicated."""
    doc = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(list(paths_of(doc))))
        if not path:
            doc = draw(documents) if draw(st.integers(0, 9)) == 0 else doc
            continue
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        if not isinstance(parent, (dict, list)):
            continue
        kind = draw(st.sampled_from(["replace", "drop", "add", "duplicate"]))
        leaf = path[-1]
        if kind == "replace":
            parent[leaf] = draw(documents)
        elif kind == "drop":
            del parent[leaf]
        elif kind == "add" and isinstance(parent, dict):
            parent[draw(keys)] = draw(documents)
        elif isinstance(parent, list):
            parent.insert(leaf, copy.deepcopy(parent[leaf]))
    return doc


@settings(max_examples=600)
@given(data=mutated_example())
def test_mutations_of_the_example_parse_or_raise_one_bundle_error(data):
    parses_or_one_error(data)


@st.composite
def mutated_text(draw):
    """An example's text (one of BASE_TEXTS) with characters inserted, bytes deleted or lines repeated or dropped."""
    text = draw(st.sampled_from(BASE_TEXTS))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["insert", "delete", "repeat-line", "drop-line", "random"]))
        if kind == "insert":
            text = text[:at] + draw(st.sampled_from([":", "- ", "\t", "  ", "{", "[", "&a ", "*a", "!!binary ", "!!set ",
                                                      "\"", "'", "\x00", "\ufeff", "? ", "<<: *a\n", "%YAML 1.1\n",
                                                      "---\n", "\n"]) | st.text(max_size=5)) + text[at:]
        elif kind == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 40)):]
        elif kind in ("repeat-line", "drop-line"):
            lines = text.splitlines(keepends=True)
            if not lines:
                continue
            index = draw(st.integers(0, len(lines) - 1))
            lines[index:index + 1] = [lines[index]] * (2 if kind == "repeat-line" else 0)
            text = "".join(lines)
        else:
            text = draw(st.text(max_size=200))
    return text


@settings(max_examples=200)
@given(text=mutated_text())
def test_load_config_on_mutated_text_loads_or_raises_one_bundle_error(tmp_path_factory, text):
    directory = tmp_path_factory.mktemp("cfg", numbered=True)
    path = directory / "bundle.yaml"
    path.write_bytes(text.encode("utf-8", errors="surrogatepass"))
    before = sorted((p.name, p.read_bytes(), p.stat().st_mtime_ns) for p in directory.iterdir())
    try:
        assert isinstance(load_config(path), BundleConfig)
    except BundleError as exc:
        assert "\n" not in str(exc)
    assert sorted((p.name, p.read_bytes(), p.stat().st_mtime_ns) for p in directory.iterdir()) == before


# --------------------------------------------------------------------------- the command line


def run_compose_env(path: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["compose-env", "--config", str(path)])
    return code, out.getvalue(), err.getvalue()


@settings(max_examples=60)
@given(data=mutated_example())
def test_a_command_reading_a_mutated_config_prints_one_error_line_or_succeeds(tmp_path_factory, data):
    """compose-env reads bundle.yaml and writes nothing: it either prints the env or one error."""
    directory = tmp_path_factory.mktemp("cli", numbered=True)
    path = directory / "bundle.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True) if data is not None else "")
    code, out, err = run_compose_env(path)
    if code != 0:
        assert code == 1 and out == "", (code, out, err)
        assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert [p.name for p in directory.iterdir()] == ["bundle.yaml"]


@pytest.mark.parametrize("text", ["namespaces: {name: default}\n", "cluster: [1, 2]\n", "pki: {ca_lifetime: 2020-01-01}\n",
                                  "namespaces:\n- name: default\n\tretention: 1d\n"])
def test_a_real_process_prints_one_error_line_for_a_bad_config(text):
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "bundle.yaml"
        path.write_text(text)
        done = subprocess.run([sys.executable, "-m", "bootstrap", "compose-env", "--config", path],
                              capture_output=True, text=True, cwd=REPO, timeout=60)
        assert done.returncode == 1 and done.stdout == "", done
        assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("error: "), done.stderr
        assert [p.name for p in Path(directory).iterdir()] == ["bundle.yaml"]


def test_the_example_itself_loads():
    """The fuzz bases are valid, so the mutations start from a config that passes."""
    for base in BASES:
        assert isinstance(parse_config(copy.deepcopy(base)), BundleConfig)
    assert BASES[1]["oidc"]["connectors"] and BASES[2]["oidc"]["external"] and BASES[1]["workload_identity"]["issuers"]
