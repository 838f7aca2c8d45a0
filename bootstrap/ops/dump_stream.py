"""The database dumps a backup seals, read as they arrive: `make backup` pipes `dump NAME` lines,
each followed by its pg_dump (custom format) in base64 lines, then `end`; `--dump NAME=FILE`
names one file. Nothing here holds a whole dump: a dump is an iterator of decoded pieces."""

from __future__ import annotations

import binascii
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from ..errors import BundleError
from .archive_manifest import DUMP_PREFIX
from .archive_v2 import Source

PGDUMP_MAGIC = b"PGDMP"  # pg_dump --format=custom
BLOCK = 1 << 20
MAX_LINE = 1 << 20  # a line without its newline after this many bytes is not base64 from `base64`
# Marker lines are never base64 lines: `dump NAME` holds a space, `end` is 3 characters long.
B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
DUMP_MODE = 0o600


def read_dump_stream(stream: BinaryIO) -> Iterator[Source]:
    """One Source per `dump NAME`; each must be read to its end before the next is asked for.
    The generator raises BundleError when the `end` marker is missing (pg_dump failed)."""
    tokens = _Tokens(stream)
    first = tokens.next()
    if first is None:
        raise BundleError("the database dumps are incomplete (no end marker): pg_dump failed?")
    if first[0] == "data":
        raise BundleError("the database dump stream does not start with a `dump NAME` line")
    marker = first[1]
    while marker != b"end":
        name = marker[5:].strip().decode(errors="replace")
        pieces = _decoded(tokens, name)
        yield Source(f"{DUMP_PREFIX}{name}.dump", DUMP_MODE, checked_dump(name, pieces))
        for _ in pieces:  # what the consumer left unread
            pass
        following = tokens.next()
        if following is None:
            raise BundleError("the database dumps are incomplete (no end marker): pg_dump failed?")
        marker = following[1]
    if tokens.next() is not None:
        raise BundleError("the database dump stream goes on after its end marker")


def file_dump(spec: str) -> Source:
    """--dump NAME=FILE, read a block at a time when the archive is sealed."""
    name, _, path = spec.partition("=")
    if not name or not path or not Path(path).is_file():
        raise BundleError(f"--dump {spec!r}: expected NAME=FILE with an existing file")
    return Source(f"{DUMP_PREFIX}{name}.dump", DUMP_MODE, checked_dump(name, _file_pieces(path)))


def _file_pieces(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as source:
        while block := source.read(BLOCK):
            yield block


def checked_dump(name: str, pieces: Iterable[bytes]) -> Iterator[bytes]:
    """The pieces, once the first bytes say pg_dump's custom format."""
    head: bytes | None = b""
    for piece in pieces:
        if head is not None:
            head += piece
            if len(head) < len(PGDUMP_MAGIC):
                continue
            check_dump(name, head)
            piece, head = head, None
        yield piece
    if head is not None:
        check_dump(name, head)


def check_dump(name: str, data: bytes) -> None:
    if not data.startswith(PGDUMP_MAGIC):
        raise BundleError(f"the dump of database {name!r} is not a pg_dump custom-format archive")


class _Tokens:
    """The stream as ("marker", line) and ("data", base64 lines) tokens, a block at a time."""

    def __init__(self, stream: BinaryIO):
        self._stream, self._rest, self._queue = stream, b"", []
        self._eof = False

    def next(self) -> tuple[str, bytes] | None:
        while not self._queue and not self._eof:
            self._fill()
        return self._queue.pop(0) if self._queue else None

    def peek_data(self) -> bytes | None:
        """The next token's text if it is data (consumed), else None (left for next())."""
        while not self._queue and not self._eof:
            self._fill()
        if self._queue and self._queue[0][0] == "data":
            return self._queue.pop(0)[1]
        return None

    def _fill(self) -> None:
        block = self._stream.read(BLOCK)
        if not block:
            self._eof = True
            text, self._rest = self._rest, b""
        else:
            text = self._rest + block
            cut = text.rfind(b"\n") + 1
            text, self._rest = text[:cut], text[cut:]
            if len(self._rest) > MAX_LINE:
                raise BundleError("the database dump stream holds a line longer than base64 writes")
        self._queue.extend(_split_markers(text))


def _split_markers(text: bytes) -> list[tuple[str, bytes]]:
    """Tokens of whole lines; bytes.find, not a regular expression: this runs over every byte."""
    tokens, position, lined = [], 0, b"\n" + text
    while position < len(text):
        found = [i for i in (lined.find(b"\ndump ", position), lined.find(b"\nend\n", position)) if i >= 0]
        if lined.endswith(b"\nend") and len(lined) - 4 >= position:
            found.append(len(lined) - 4)
        if not found:
            tokens.append(("data", text[position:]))
            break
        start = min(found)
        end = text.find(b"\n", start)
        end = len(text) if end < 0 else end
        if start > position:
            tokens.append(("data", text[position:start]))
        tokens.append(("marker", text[start:end]))
        position = end + 1
    return tokens


def _decoded(tokens: _Tokens, name: str) -> Iterator[bytes]:
    carry, padded = b"", False
    while (text := tokens.peek_data()) is not None:
        if padded and text.strip():
            raise BundleError(f"the dump of database {name!r} in the stream is not valid base64")
        if not carry and (fast := _decode_lines(text)) is not None:  # whole lines of 4-character groups
            decoded, padded = fast
            yield decoded
            continue
        text = carry + text.translate(None, b"\r\n")
        usable = len(text) - len(text) % 4
        carry = text[usable:]
        if not usable:
            continue
        try:
            yield binascii.a2b_base64(text[:usable], strict_mode=True)
        except binascii.Error:
            raise BundleError(f"the dump of database {name!r} in the stream is not valid base64") from None
        padded = text[usable - 1 : usable] == b"="
    if carry:
        raise BundleError(f"the dump of database {name!r} in the stream is not valid base64")


def _decode_lines(text: bytes) -> tuple[bytes, bool] | None:
    """What `base64` writes, decoded without stripping newlines first (the lenient decoder skips
    them), once checked: only its alphabet, padding only at the end, whole 4-character groups.
    None: let the strict path decide."""
    if text.translate(None, B64_ALPHABET + b"\n"):
        return None
    body = text.rstrip(b"\n")
    padding = body.find(b"=")
    if (padding >= 0 and padding < len(body) - 2) or (len(body) - body.count(b"\n")) % 4:
        return None
    return binascii.a2b_base64(text), padding >= 0
