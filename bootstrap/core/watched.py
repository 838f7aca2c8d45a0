"""A file re-read and re-parsed only when it changes: certificates, keys, JWKS, recorded answers
that their writers replace (atomic rename) or rewrite while a service keeps running."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


def file_stamp(*paths: Path) -> tuple:
    """What changes when a file is rewritten or replaced: (mtime, size, inode) of each.
    Raises OSError when one of them is missing or unreadable."""
    stamps = []
    for path in paths:
        st = os.stat(path)
        stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(stamps)


class WatchedFile(Generic[T]):
    """`parse(path)` of `path`, run again only when the stamp of `path` (and of `also`, files
    parsed together with it, such as a certificate's key) changes.

    current() raises OSError when a file cannot be stat'ed, and whatever `parse` raises; after
    a failure the stamp is not recorded, so the next call tries again. What to do with a failure
    (keep `last`, refuse, log) is the caller's choice: `last` is the value of the last good parse,
    None before the first."""

    def __init__(self, path: Path, parse: Callable[[Path], T], also: tuple[Path, ...] = ()):
        self.path, self.parse, self.files = Path(path), parse, (Path(path), *map(Path, also))
        self.last: T | None = None
        self._stamp: tuple | None = None
        self._lock = threading.Lock()  # one parse at a time, from any thread

    def current(self) -> T:
        with self._lock:
            stamp = file_stamp(*self.files)
            if stamp != self._stamp:
                self.last, self._stamp = self.parse(self.path), stamp
            return self.last
