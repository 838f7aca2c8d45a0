"""Fuzzing `backup verify` and `backup restore` (Hypothesis): crafted manifests sealed with the
right passphrase (so they get past the encryption to the parser), and damaged archives. Whatever
the input: exit 0, or exit 1 with exactly one line `error: ...`; never a traceback, and a refused
restore leaves its target byte-identical. The CLI runs in-process through bootstrap.cli.main (a
few examples run as a subprocess, to see the one line a real process prints).

Budgets (max_examples), each test under 20 s on 2 shared cores: random manifest shapes 30,
mutations of a valid manifest 45, damaged archives 60. Archives are sealed with scrypt log2(N) 14
(the smallest an archive may ask for) to keep each example near 0.1 s."""

from __future__ import annotations

import contextlib
import copy
import io
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bootstrap.cli import main
from bootstrap.ops.archive_manifest import FILE_TYPES, MANIFEST_TYPES
from bootstrap.ops.archive_v1 import seal_manifest
from bootstrap.ops.backup import open_archive
from tests.support.bundles import tree

PASSPHRASE = "fuzzing passphrase, long enough"
LOG2_N = 14
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def base(ec_bundle, tmp_path_factory):
    """(manifest, the files' bytes in manifest order, passphrase file, work directory) of a real
    archive of the session's bundle."""
    work = tmp_path_factory.mktemp("fuzz-backup")
    secret = work / "passphrase"
    secret.write_text(PASSPHRASE + "\n")
    dump = work / "temporal.dump"
    dump.write_bytes(b"PGDMP" + os.urandom(64))
    archive = work / "real.tbak"
    assert cli("backup", "create", "--config", ec_bundle.config_path, "--out", ec_bundle.root, "--archive", archive,
               "--passphrase-file", secret, "--dump", f"temporal={dump}")[0] == 0
    opened = open_archive(archive.read_bytes(), PASSPHRASE.encode())
    files = b"".join(opened.entries[item["name"]].data for item in opened.manifest["files"])
    return {**opened.manifest, "format": 1}, files, secret, work  # re-sealed in format 1 (in memory)


def cli(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()



def assert_one_error_or_ok(result: tuple[int, str, str]) -> bool:
    """True when the command succeeded; else it must have printed one `error:` line, nothing else."""
    code, out, err = result
    if code == 0:
        return True
    assert code == 1 and out == "", result
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert PASSPHRASE not in err
    return False


def check_archive(base, data: bytes, must_fail: bool) -> None:
    """verify, then restore onto a directory that holds a file; a refusal changes nothing."""
    _, _, secret, work = base
    with tempfile.TemporaryDirectory(dir=work) as scratch:
        archive, target = Path(scratch) / "x.tbak", Path(scratch) / "target"
        archive.write_bytes(data)
        (target / "private").mkdir(parents=True)
        (target / "private" / "unrelated").write_text("kept\n")
        verified = assert_one_error_or_ok(cli("backup", "verify", "--archive", archive, "--out", target,
                                              "--passphrase-file", secret))
        before = tree(target)
        restored = assert_one_error_or_ok(cli("backup", "restore", "--archive", archive, "--out", target,
                                              "--passphrase-file", secret))
        assert verified == restored, "verify and restore disagree about one archive"
        assert not (must_fail and verified), "a broken manifest was called ok"
        if not restored:
            assert tree(target) == before, "a refused restore changed the target"


def sealed(manifest, files: bytes) -> bytes:
    return seal_manifest(manifest, files, PASSPHRASE.encode(), LOG2_N)


# --------------------------------------------------------------------------- strategies

NAME_PIECES = ["private", "codec-keys", "codec-kek", "exchange", "databases", "jwt", "ca.pem", "keys.json",
               "..", ".", "", "/", "\x00", "\udcff", "é", " ", "x" * 300, "temporal.dump", "bundle.yaml"]
names = st.one_of(st.text(max_size=40), st.lists(st.sampled_from(NAME_PIECES), max_size=6).map("/".join),
                  st.lists(st.sampled_from(NAME_PIECES), max_size=6).map("".join))
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-2, 2**33), st.floats(allow_nan=False),
                    st.text(max_size=20), names)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=12)
file_items = st.fixed_dictionaries({key: json_values for key in FILE_TYPES}) | st.fixed_dictionaries(
    {"name": names, "size": st.integers(-1, 5000), "sha256": st.text("0123456789abcdef", min_size=63, max_size=65),
     "mode": st.integers(-1, 0o10000)})
manifest_shapes = st.one_of(
    json_values,
    st.fixed_dictionaries({key: json_values for key in MANIFEST_TYPES}),
    st.fixed_dictionaries({**{key: json_values for key in MANIFEST_TYPES}, "files": st.lists(file_items, max_size=5)}),
)


@st.composite
def mutated_manifests(draw, manifest: dict):
    """A valid manifest with one to three changes: a field replaced, dropped or added, a file
    entry's field changed, an entry duplicated, moved or dropped."""
    changed = copy.deepcopy(manifest)
    for _ in range(draw(st.integers(1, 3))):
        files = changed.get("files") if isinstance(changed, dict) else None
        kind = draw(st.sampled_from(["field", "drop", "add", "file-field", "file-name", "duplicate", "move", "remove"]))
        if not isinstance(changed, dict):
            break
        if kind == "field":
            changed[draw(st.sampled_from(sorted(MANIFEST_TYPES)))] = draw(json_values)
        elif kind == "drop":
            changed.pop(draw(st.sampled_from(sorted(MANIFEST_TYPES))), None)
        elif kind == "add":
            changed[draw(st.text(max_size=8))] = draw(json_values)
        elif isinstance(files, list) and files and all(isinstance(f, dict) for f in files):
            index = draw(st.integers(0, len(files) - 1))
            if kind == "file-field":
                files[index][draw(st.sampled_from(sorted(FILE_TYPES) + ["extra"]))] = draw(json_values)
            elif kind == "file-name":
                files[index]["name"] = draw(names)
            elif kind == "duplicate":
                files.insert(draw(st.integers(0, len(files))), copy.deepcopy(files[index]))
            elif kind == "move":
                files.insert(draw(st.integers(0, len(files) - 1)), files.pop(index))
            else:
                files.pop(index)
    return changed


# --------------------------------------------------------------------------- tests


@settings(max_examples=30)
@given(data=st.data())
def test_random_manifest_shapes_are_refused_in_one_line(base, data):
    manifest, files, _, _ = base
    shape = data.draw(manifest_shapes)
    check_archive(base, sealed(shape, files), must_fail=True)


@settings(max_examples=45)
@given(data=st.data())
def test_mutated_manifests_are_accepted_or_refused_in_one_line(base, data):
    manifest, files, _, _ = base
    changed = data.draw(mutated_manifests(manifest))
    check_archive(base, sealed(changed, files), must_fail=not is_harmless(manifest, changed))


def is_harmless(original: dict, changed) -> bool:
    """The only changes a manifest may survive: other text in `created` / `bundle_version`, or
    its file list reordered (then the bytes no longer match: refused by checksum, still fine)."""
    if not isinstance(changed, dict) or set(changed) != set(original):
        return False
    same_files = changed["files"] == original["files"]
    texts_ok = all(isinstance(changed[k], str) and len(changed[k]) <= 1024 for k in ("created", "bundle_version"))
    others_same = all(changed[k] == original[k] for k in original if k not in ("created", "bundle_version"))
    return same_files and texts_ok and others_same


@st.composite
def damaged(draw, data: bytes):
    kind = draw(st.sampled_from(["truncate", "flip", "reorder", "random", "magic-then-random", "append"]))
    if kind == "truncate":
        return data[: draw(st.integers(0, len(data) - 1))]
    if kind == "flip":
        out = bytearray(data)
        for position in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=4, unique=True)):
            out[position] ^= draw(st.integers(1, 255))
        return bytes(out)
    if kind == "reorder":
        cuts = sorted(draw(st.lists(st.integers(1, len(data) - 1), min_size=1, max_size=4, unique=True)))
        chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]
        order = draw(st.permutations(range(len(chunks))).filter(lambda p: list(p) != sorted(p)))
        return b"".join(chunks[i] for i in order)
    if kind == "random":
        return draw(st.binary(max_size=2000))
    if kind == "magic-then-random":
        return data[:8] + draw(st.binary(max_size=2000))
    return data + draw(st.binary(min_size=1, max_size=64))


@settings(max_examples=60)
@given(data=st.data())
def test_damaged_archives_are_refused_in_one_line(base, data):
    manifest, files, _, _ = base
    archive = data.draw(damaged(sealed(manifest, files)))
    check_archive(base, archive, must_fail=True)


def test_the_untouched_archive_passes_the_same_checks(base):
    """The fuzz oracle is not vacuous: the real manifest, re-sealed, verifies and restores."""
    manifest, files, _, _ = base
    check_archive(base, sealed(manifest, files), must_fail=False)


# --------------------------------------------------------------------------- as a real process


@pytest.mark.parametrize("case", ["nul in a name", "size a string", "truncated"])
def test_a_real_process_prints_one_error_line(base, case):
    manifest, files, secret, work = base
    crafted = copy.deepcopy(manifest)
    if case == "nul in a name":
        crafted["files"][0]["name"] = "private/c\x00a.pem"
    elif case == "size a string":
        crafted["files"][0]["size"] = str(crafted["files"][0]["size"])
    data = sealed(crafted, files)
    data = data[: len(data) // 2] if case == "truncated" else data
    with tempfile.TemporaryDirectory(dir=work) as scratch:
        archive, target = Path(scratch) / "x.tbak", Path(scratch) / "target"
        archive.write_bytes(data)
        for action in ("verify", "restore"):
            done = subprocess.run([sys.executable, "-m", "bootstrap", "backup", action, "--archive", archive, "--out", target,
                                   "--passphrase-file", secret], capture_output=True, text=True, cwd=REPO, timeout=60)
            assert done.returncode == 1 and done.stdout == "", done
            assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("error: "), done.stderr
        assert not target.exists()
