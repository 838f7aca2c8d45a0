"""core/watched.py: a file parsed again only when its (inode, mtime, size) changes."""

from __future__ import annotations

import os

import pytest

from bootstrap.core.watched import WatchedFile


def counting(parse):
    calls = []

    def counted(path):
        calls.append(path)
        return parse(path)

    return counted, calls


def test_parses_once_while_the_file_is_unchanged(tmp_path):
    path = tmp_path / "doc"
    path.write_text("one")
    parse, calls = counting(lambda p: p.read_text())
    watched = WatchedFile(path, parse)
    assert [watched.current() for _ in range(3)] == ["one"] * 3
    assert len(calls) == 1


def test_a_rewrite_of_the_same_size_and_a_replacement_are_both_seen(tmp_path):
    path = tmp_path / "doc"
    path.write_text("one")
    watched = WatchedFile(path, lambda p: p.read_text())
    watched.current()
    path.write_text("two")  # same size: only the mtime tells
    os.utime(path, ns=(0, os.stat(path).st_mtime_ns + 1_000_000))
    assert watched.current() == "two"
    replacement = tmp_path / "doc.new"
    replacement.write_text("six")
    stamp = os.stat(path)
    os.utime(replacement, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))  # same size and mtime: only the inode tells
    replacement.replace(path)
    assert watched.current() == "six"


def test_a_failed_parse_keeps_the_last_good_value_and_is_retried(tmp_path):
    path = tmp_path / "doc"
    path.write_text("1")
    parse, calls = counting(lambda p: int(p.read_text()))
    watched = WatchedFile(path, parse)
    assert watched.current() == 1
    path.write_text("half")
    with pytest.raises(ValueError):
        watched.current()
    with pytest.raises(ValueError):
        watched.current()  # not stamped as good: parsed again
    assert watched.last == 1 and len(calls) == 3
    path.write_text("22")
    assert watched.current() == 22


def test_a_missing_file_raises_oserror_and_a_companion_file_counts(tmp_path):
    cert, key = tmp_path / "cert", tmp_path / "key"
    cert.write_text("c")
    watched = WatchedFile(cert, lambda p: p.read_text(), also=(key,))
    with pytest.raises(OSError):
        watched.current()
    assert watched.last is None
    key.write_text("k")
    assert watched.current() == "c"
    parse, calls = counting(lambda p: p.read_text())
    watched.parse = parse
    key.write_text("key")  # only the companion changed
    assert watched.current() == "c" and len(calls) == 1
