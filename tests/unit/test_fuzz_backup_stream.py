"""Fuzzing the streaming archive's reader (format 2, Hypothesis): damaged archives of many small
chunks (truncated, flipped, chunks reordered, bytes appended or random), and arbitrary plaintext
sealed with the right passphrase so it reaches the record parser. Whatever the input, `backup
verify`, `restore` and `dump` exit 0 or print exactly one `error:` line; never a traceback; a
refused restore leaves its target byte-identical and a refused dump writes nothing to stdout.

Budgets (max_examples) keep each test near 20 s on 2 shared cores: archives are sealed with
scrypt log2(N) 14 and 4 KiB chunks."""

from __future__ import annotations

import contextlib
import io
import os
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bootstrap.cli import main
from bootstrap.core.archive_stream import PREFIX_SIZE, TAG_SIZE, Sealer
from bootstrap.ops.archive_v2 import Source, seal_archive
from bootstrap.ops.backup import archive_entries
from bootstrap.store import Layout
from tests.support.bundles import tree

PASSPHRASE = "fuzzing passphrase, long enough"
LOG2_N, CHUNK_LOG2 = 14, 12
SEALED_CHUNK = (1 << CHUNK_LOG2) + TAG_SIZE


@pytest.fixture(scope="module")
def base(ec_bundle, tmp_path_factory):
    """(a real format-2 archive of the session's bundle in 4 KiB chunks, passphrase file, work dir)."""
    work = tmp_path_factory.mktemp("fuzz-backup-stream")
    secret = work / "passphrase"
    secret.write_text(PASSPHRASE + "\n")
    out = io.BytesIO()
    entries = archive_entries(Layout(Path(ec_bundle.root)), Path(ec_bundle.config_path))
    dump = Source("databases/temporal.dump", 0o600, [b"PGDMP" + os.urandom(20_000)])
    seal_archive(out, entries, [dump], PASSPHRASE.encode(), LOG2_N, CHUNK_LOG2)
    return out.getvalue(), secret, work


def cli(*args) -> tuple[int, bytes, str]:
    raw, err = io.BytesIO(), io.StringIO()
    out = io.TextIOWrapper(raw, write_through=True)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    out.flush()
    return code, raw.getvalue(), err.getvalue()



def ok_or_one_error(result: tuple[int, bytes, str]) -> bool:
    code, out, err = result
    if code == 0:
        return True
    assert code == 1 and out == b"", (code, out[:200], err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert PASSPHRASE not in err
    return False


def check_archive(base, data: bytes, must_fail: bool) -> None:
    _, secret, work = base
    with tempfile.TemporaryDirectory(dir=work) as scratch:
        archive, target = Path(scratch) / "x.tbak", Path(scratch) / "target"
        archive.write_bytes(data)
        (target / "private").mkdir(parents=True)
        (target / "private" / "unrelated").write_text("kept\n")
        common = ("--archive", archive, "--out", target, "--passphrase-file", secret)
        verified = ok_or_one_error(cli("backup", "verify", *common))
        dumped = ok_or_one_error(cli("backup", "dump", "--database", "temporal", *common))
        before = tree(target)
        restored = ok_or_one_error(cli("backup", "restore", *common))
        assert verified == restored == dumped, "verify, dump and restore disagree about one archive"
        assert not (must_fail and verified), "a damaged archive was called ok"
        if not restored:
            assert tree(target) == before, "a refused restore changed the target"


@st.composite
def damaged(draw, data: bytes):
    kind = draw(st.sampled_from(["truncate", "truncate-at-chunk", "flip", "swap-chunks", "drop-chunk", "append", "random"]))
    chunks = [data[i : i + SEALED_CHUNK] for i in range(PREFIX_SIZE, len(data), SEALED_CHUNK)]
    if kind == "truncate":
        return data[: draw(st.integers(0, len(data) - 1))]
    if kind == "truncate-at-chunk":
        return data[:PREFIX_SIZE] + b"".join(chunks[: draw(st.integers(0, len(chunks) - 1))])
    if kind == "flip":
        out = bytearray(data)
        for position in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=4, unique=True)):
            out[position] ^= draw(st.integers(1, 255))
        return bytes(out)
    if kind in ("swap-chunks", "drop-chunk"):
        i = draw(st.integers(0, len(chunks) - 2))
        j = draw(st.integers(i + 1, len(chunks) - 1))
        if kind == "drop-chunk":
            return data[:PREFIX_SIZE] + b"".join(chunks[:i] + chunks[i + 1:])
        chunks[i], chunks[j] = chunks[j], chunks[i]
        return data[:PREFIX_SIZE] + b"".join(chunks)
    if kind == "append":
        return data + draw(st.binary(min_size=1, max_size=SEALED_CHUNK + 20))
    return data[:PREFIX_SIZE] + draw(st.binary(max_size=3 * SEALED_CHUNK))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_damaged_streaming_archives_are_refused_in_one_line(base, data):
    archive = base[0]
    assert len(archive) > 4 * SEALED_CHUNK
    check_archive(base, data.draw(damaged(archive)), must_fail=True)


def u16(n: int) -> bytes:
    return struct.pack(">H", n)


def u32(n: int) -> bytes:
    return struct.pack(">I", n)


NAMES = [b"private/ca.pem", b"databases/temporal.dump", b"bundle.yaml", b"../x", b"private/\x00", b"\xff\xfe",
         b"databases/x", b"codec-keys/keys.json", b"x" * 2000]
records = st.one_of(
    st.builds(lambda name, mode, segments: b"F" + u16(len(name)) + name + u16(mode)
              + b"".join(u32(len(s)) + s for s in segments) + u32(0),
              st.sampled_from(NAMES), st.integers(0, 0xFFFF), st.lists(st.binary(min_size=1, max_size=50), max_size=3)),
    st.builds(lambda body: b"M" + u32(len(body)) + body,
              st.sampled_from([b"{}", b"[]", b"null", b'{"format": 2}', b"\xff", b"[" * 5000])),
    st.builds(lambda n: b"F" + u16(n), st.integers(0, 0xFFFF)),  # a header that ends early
    st.builds(lambda n: b"M" + u32(n), st.integers(0, 2**32 - 1)),  # a length past the end
    st.binary(max_size=40),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plaintext=st.lists(records, max_size=6).map(b"".join))
def test_any_authenticated_plaintext_is_accepted_or_refused_in_one_line(base, plaintext):
    out = io.BytesIO()
    sealer = Sealer(out, PASSPHRASE.encode(), LOG2_N, CHUNK_LOG2)
    sealer.write(plaintext)
    sealer.close()
    check_archive(base, out.getvalue(), must_fail=True)
