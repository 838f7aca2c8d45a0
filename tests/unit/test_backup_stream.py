"""The streaming archive (format 2): chunks moved, dropped, repeated or cut at a boundary, the
final chunk missing, bytes after it, a flipped byte anywhere: each is refused in one `error:`
line before anything is written, `backup dump` included (it writes to stdout only after the whole
archive authenticated). Archives sealed by the in-memory format-1 code still verify, restore and
dump. The `make backup` dump stream is decoded as it arrives and a broken one leaves no file."""

from __future__ import annotations

import base64
import io
import os
import random
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bootstrap.core.archive_stream import HEADER, PREFIX_SIZE, TAG_SIZE, Sealer, open_stream
from bootstrap.errors import BundleError
from bootstrap.ops.backup import open_archive
from bootstrap.ops.dump_stream import read_dump_stream

PASSPHRASE = "correct horse battery staple"
CHUNK = (1 << 20) + TAG_SIZE  # a sealed chunk of the default size
BIG = b"PGDMP" + random.Random(7).randbytes(3 * (1 << 20) + 1000)  # four chunks with the rest of the archive
SMALL = b"PGDMP" + os.urandom(500)
FIXTURE = Path(__file__).parent / "data" / "backup-v1.tbak"
FIXTURE_PASSPHRASE = "format one fixture passphrase"  # sealed by the format-1 code at commit 4caed4e


@pytest.fixture(autouse=True)
def passphrase(monkeypatch):
    monkeypatch.delenv("BACKUP_PASSPHRASE_FILE", raising=False)
    monkeypatch.setenv("BACKUP_PASSPHRASE", PASSPHRASE)


@pytest.fixture
def archive(fresh_bundle, tmp_path):
    dump = tmp_path / "temporal.dump"
    dump.write_bytes(BIG)
    small = tmp_path / "visibility.dump"
    small.write_bytes(SMALL)
    path = tmp_path / "big.tbak"
    result = fresh_bundle.run("backup", "create", "--archive", path, "--dump", f"temporal={dump}",
                              "--dump", f"temporal_visibility={small}")
    assert result.code == 0, result.err
    return path


def chunks_of(data: bytes) -> tuple[bytes, list[bytes]]:
    return data[:PREFIX_SIZE], [data[i : i + CHUNK] for i in range(PREFIX_SIZE, len(data), CHUNK)]


def refused(cli, fresh_bundle, snap, data: bytes, tmp_path, *fragments) -> str:
    """verify, restore (onto the bundle and onto an empty directory) and dump each refuse it in
    one line, and nothing is written: not the target, not stdout."""
    damaged = tmp_path / "damaged.tbak"
    damaged.write_bytes(data)
    before = snap(fresh_bundle.root)
    line = fresh_bundle.run("backup", "verify", "--archive", damaged).assert_one_error(*fragments)
    fresh_bundle.run("backup", "restore", "--archive", damaged).assert_one_error(*fragments)
    cli("backup", "restore", "--archive", damaged, "--out", tmp_path / "empty").assert_one_error(*fragments)
    dumped = fresh_bundle.run("backup", "dump", "--archive", damaged, "--database", "temporal")
    dumped.assert_one_error(*fragments)
    assert snap(fresh_bundle.root) == before and not (tmp_path / "empty").exists()
    return line


def test_a_big_dump_spans_chunks_and_comes_back_whole(fresh_bundle, archive, capsysbinary):
    from bootstrap.cli import main

    assert len(chunks_of(archive.read_bytes())[1]) == 4
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    assert main(["backup", "dump", "--archive", str(archive), "--database", "temporal",
                 "--config", str(fresh_bundle.config_path), "--out", str(fresh_bundle.root)]) == 0
    assert capsysbinary.readouterr().out == BIG
    assert open_archive(archive.read_bytes(), PASSPHRASE.encode()).manifest["format"] == 2


@pytest.mark.parametrize("case", ["swap", "repeat", "drop-middle", "drop-final", "cut-after-first",
                                  "final-twice", "appended", "last-byte"])
def test_chunk_damage_is_refused_before_anything_is_written(cli, fresh_bundle, archive, snap, tmp_path, case):
    head, chunks = chunks_of(archive.read_bytes())
    damaged, fragment = {
        "swap": (chunks[:1] + [chunks[2], chunks[1]] + chunks[3:], "chunk 1 fails authentication"),
        "repeat": (chunks[:2] + chunks[1:], "chunk 2 fails authentication"),
        "drop-middle": (chunks[:1] + chunks[2:], "chunk 1 fails authentication"),
        "drop-final": (chunks[:-1], "truncated"),
        "cut-after-first": (chunks[:1], "truncated"),
        "final-twice": (chunks + chunks[-1:], "fails authentication"),
        "appended": (chunks + [b"\0"], "damaged"),
        "last-byte": (chunks[:-1] + [chunks[-1][:-1] + bytes([chunks[-1][-1] ^ 1])], "fails authentication"),
    }[case]
    refused(cli, fresh_bundle, snap, head + b"".join(damaged), tmp_path, fragment)


def test_every_header_byte_and_bytes_across_every_chunk_are_authenticated(archive):
    data = archive.read_bytes()
    positions = set(range(PREFIX_SIZE)) | set(random.Random(1).sample(range(PREFIX_SIZE, len(data)), 12))
    positions |= {PREFIX_SIZE + i * CHUNK + offset for i in range(4) for offset in (0, CHUNK - 1)} - {len(data) + CHUNK - 1}
    for position in sorted(p for p in positions if p < len(data)):
        damaged = bytearray(data)
        damaged[position] ^= 0x01
        with pytest.raises(BundleError):
            open_archive(bytes(damaged), PASSPHRASE.encode())


def test_wrong_passphrase_and_header_damage_say_so_and_chunk_damage_says_damaged(archive):
    data = archive.read_bytes()
    with pytest.raises(BundleError, match="wrong passphrase"):
        open_archive(data, b"not the passphrase at all")
    with pytest.raises(BundleError, match="wrong passphrase"):  # the nonce prefix: bound by the check tag
        open_archive(data[:30] + bytes([data[30] ^ 1]) + data[31:], PASSPHRASE.encode())
    with pytest.raises(BundleError, match="unsupported"):  # a chunk size a reader must not buffer
        open_archive(data[: HEADER.size - 1] + bytes([30]) + data[HEADER.size:], PASSPHRASE.encode())
    with pytest.raises(BundleError, match="damaged or was tampered with"):
        open_archive(data[:-CHUNK // 2] + bytes([data[-CHUNK // 2] ^ 1]) + data[-CHUNK // 2 + 1:], PASSPHRASE.encode())


def test_the_dump_pass_refuses_a_file_replaced_between_its_passes(fresh_bundle, archive, monkeypatch):
    """dump authenticates the whole archive, then reads it again to write: through the same open
    file, and only if it did not change in between."""
    from bootstrap.ops import backup

    written = []

    def swap(_archive):
        with open(archive, "r+b") as f:  # in place, the same inode: the stamp sees the new mtime
            f.seek(PREFIX_SIZE + 10)
            f.write(b"\xff")
            os.utime(archive, ns=(1, 1))

    with pytest.raises(BundleError, match="changed while it was read"):
        backup.write_dump(archive, PASSPHRASE.encode(), "temporal", written.append, swap)
    assert written == []


# --------------------------------------------------------------------------- STREAM itself


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 3 * 4096])
def test_stream_round_trip_at_and_around_chunk_boundaries(size):
    data, out = os.urandom(size), io.BytesIO()
    sealer = Sealer(out, b"p" * 12, log2_n=14, chunk_log2=12)
    sealer.write(data[:100])
    sealer.write(data[100:])
    sealer.close()
    sealed = out.getvalue()
    assert b"".join(open_stream(io.BytesIO(sealed), b"p" * 12, "x")) == data
    cuts = range(PREFIX_SIZE, len(sealed), 4096 + TAG_SIZE)  # every chunk boundary, the final chunk's start too
    for cut in cuts:
        with pytest.raises(BundleError, match="truncated"):
            b"".join(open_stream(io.BytesIO(sealed[:cut]), b"p" * 12, "x"))


def test_a_stream_whose_sealer_never_closed_does_not_open():
    out = io.BytesIO()
    sealer = Sealer(out, b"p" * 12, log2_n=14, chunk_log2=12)
    sealer.write(os.urandom(3 * 4096 + 5))  # pg_dump died here: no close(), no final chunk
    with pytest.raises(BundleError, match="truncated"):
        b"".join(open_stream(io.BytesIO(out.getvalue()), b"p" * 12, "x"))


# --------------------------------------------------------------------------- format 1


def test_an_archive_sealed_by_the_format_1_code_verifies_restores_and_dumps(tmp_path, monkeypatch, capsysbinary):
    from bootstrap.cli import main

    monkeypatch.setenv("BACKUP_PASSPHRASE", FIXTURE_PASSPHRASE)
    opened = open_archive(FIXTURE.read_bytes(), FIXTURE_PASSPHRASE.encode())
    assert opened.manifest["format"] == 1 and opened.databases() == ["temporal", "temporal_visibility"]
    target = tmp_path / "restored"
    assert main(["backup", "verify", "--archive", str(FIXTURE), "--out", str(target)]) == 0
    assert b"databases: temporal, temporal_visibility" in capsysbinary.readouterr().out
    assert main(["backup", "restore", "--archive", str(FIXTURE), "--out", str(target)]) == 0
    assert (target / "private" / "ca.key").read_bytes() == opened.entries["private/ca.key"].data
    assert stat.S_IMODE((target / "private" / "ca.key").stat().st_mode) == 0o600
    capsysbinary.readouterr()
    assert main(["backup", "dump", "--archive", str(FIXTURE), "--database", "temporal", "--out", str(target)]) == 0
    assert capsysbinary.readouterr().out == b"PGDMP" + bytes(range(256)) * 40


def test_a_damaged_format_1_archive_is_still_refused(cli, tmp_path, monkeypatch, snap):
    monkeypatch.setenv("BACKUP_PASSPHRASE", FIXTURE_PASSPHRASE)
    data = FIXTURE.read_bytes()
    damaged = tmp_path / "v1.tbak"
    damaged.write_bytes(data[:-10] + bytes([data[-10] ^ 1]) + data[-9:])
    cli("backup", "restore", "--archive", damaged, "--out", tmp_path / "t").assert_one_error("tampered")
    assert not (tmp_path / "t").exists()


# --------------------------------------------------------------------------- the dump stream


def stream(*parts: bytes | str) -> io.BytesIO:
    return io.BytesIO(b"".join(p.encode() if isinstance(p, str) else p for p in parts))


def framed(name: str, data: bytes) -> bytes:
    return f"dump {name}\n".encode() + base64.encodebytes(data)


def collect(source: io.BytesIO) -> dict[str, bytes]:
    return {s.name: b"".join(s.pieces) for s in read_dump_stream(source)}


def test_the_dump_stream_decodes_across_blocks():
    big = b"PGDMP" + os.urandom(3 * (1 << 20) + 7)  # more than one read block, a line cut between blocks
    assert collect(stream(framed("a", big), framed("b", SMALL), "end\n")) == \
        {"databases/a.dump": big, "databases/b.dump": SMALL}
    assert collect(stream(framed("a", SMALL), "end")) == {"databases/a.dump": SMALL}  # no final newline


@pytest.mark.parametrize("text, fragment", [
    (b"", "no end marker"),
    (framed("a", SMALL), "no end marker"),
    (b"QUJD\nend\n", "does not start"),
    (b"dump a\nQUJD\nend\n", "not a pg_dump"),
    (b"dump a\nend\n", "not a pg_dump"),
    (framed("a", SMALL) + b"QQ==\nend\n", "not valid base64"),
    (framed("a", SMALL)[:-3] + b"\nend\n", "not valid base64"),
    (b"dump a\nUEdETVAx*\nend\n", "not valid base64"),
    (framed("a", SMALL) + b"end\nmore\n", "after its end marker"),
    (b"dump a\n" + b"A" * (2 << 20), "longer than base64 writes"),
])
def test_a_broken_dump_stream_is_one_error(text, fragment):
    with pytest.raises(BundleError, match=fragment):
        collect(io.BytesIO(text))


def test_create_from_a_broken_dump_stream_leaves_no_file(fresh_bundle, tmp_path, monkeypatch, snap):
    """pg_dump died mid-way (no end marker): the archive, sealed as the dump arrived, is removed."""
    backups = tmp_path / "backups"
    backups.mkdir()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(stream(framed("temporal", BIG))))
    fresh_bundle.run("backup", "create", "--archive", backups / "x.tbak", "--dumps-stdin").assert_one_error("no end marker")
    assert list(backups.iterdir()) == []


def test_create_from_the_dump_stream_round_trips(fresh_bundle, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(stream(framed("temporal", BIG), framed("temporal_visibility", SMALL), "end\n")))
    path = tmp_path / "s.tbak"
    result = fresh_bundle.run("backup", "create", "--archive", path, "--dumps-stdin")
    assert result.code == 0 and "databases: temporal, temporal_visibility" in result.out, result
    opened = open_archive(path.read_bytes(), PASSPHRASE.encode())
    assert opened.dump("temporal") == BIG and opened.dump("temporal_visibility") == SMALL


# --------------------------------------------------------------------------- memory


MEASURE = """
import sys
from bootstrap.cli import main
code = main(sys.argv[1:])
peak = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
sys.stderr.write(f"peak-kib {peak}\\n")
sys.exit(code)
"""
GIB = 1 << 30
PEAK_LIMIT_MIB = 128  # the bound for the bootstrap; the in-memory format needed > 2 GiB here


def measured(before: str, args: list, after: str, env: dict) -> tuple[int, str]:
    """`before | bootstrap ARGS | after` in bash: the bootstrap's peak RSS (VmHWM) in MiB, and
    what `after` printed."""
    cli = f"{sys.executable} -c '{MEASURE}' " + " ".join(f"'{a}'" for a in args)
    done = subprocess.run(["bash", "-o", "pipefail", "-c", f"{before} | {cli} | {after}"], capture_output=True,
                          env=env, cwd=Path(__file__).parents[2], timeout=900)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    peak = [line for line in done.stderr.decode().splitlines() if line.startswith("peak-kib ")][0]
    return int(peak.split()[1]) // 1024, done.stdout.decode()


def test_one_gib_dump_seals_and_opens_in_bounded_memory(fresh_bundle, tmp_path):
    """1 GiB of dump through `backup create --dumps-stdin` and back out of `backup dump`: the
    process's peak RSS stays under the bound, and what comes out is what went in."""
    env = {**os.environ, "BACKUP_PASSPHRASE": PASSPHRASE}
    common = ["--config", fresh_bundle.config_path, "--out", fresh_bundle.root]
    archive = tmp_path / "gib.tbak"
    dump = f"{{ printf PGDMP; head -c {GIB} /dev/zero; }}"
    framed_dump = f"{{ echo 'dump temporal'; {dump} | base64; echo end; }}"
    sealed, _ = measured(framed_dump, ["backup", "create", "--archive", archive, "--dumps-stdin", *common], "cat", env)
    assert archive.stat().st_size > GIB
    opened, digest = measured("true", ["backup", "dump", "--archive", archive, "--database", "temporal", *common],
                              "sha256sum", env)
    expected = subprocess.run(["bash", "-c", f"{dump} | sha256sum"], capture_output=True, text=True, check=True).stdout
    assert digest.split()[0] == expected.split()[0]
    assert sealed < PEAK_LIMIT_MIB and opened < PEAK_LIMIT_MIB, (sealed, opened)
