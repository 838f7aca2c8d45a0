"""Which bundle.yaml keys the config parser accepts, learnt from the parser itself, and the
example config's commented settings switched on.

The parser reads a section key by key (`data.get(key)`, also for keys that are absent); handing it
mappings that record those reads yields every key it knows, as dotted paths ("oidc.external.issuer";
list items add no segment). A sub-section parsed only when present (`oidc.external`, list items)
is learnt from an input that has it: the example config with every setting switched on.

The example's convention: "## " lines explain, "# " lines are settings (delete "# " to switch one
on), and a block after a "## Alternative" line replaces the top-level section it names.
"""

from __future__ import annotations

from typing import Any

from bootstrap.core.config import parse_config
from bootstrap.ops.config_schema import EXAMPLE, FREE_CONTENT, FREE_KEYS, example_variants  # noqa: F401 (re-exported)


class _Recording(dict):
    def __init__(self, data: dict, path: str, seen: set[str]):
        super().__init__({k: _wrap(v, _join(path, k), seen) for k, v in data.items()})
        self._path, self._seen = path, seen

    def _read(self, key: Any) -> None:
        self._seen.add(_join(self._path, key))

    def get(self, key, default=None):
        self._read(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self._read(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self._read(key)
        return super().__contains__(key)


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _wrap(value: Any, path: str, seen: set[str]) -> Any:
    if isinstance(value, dict):
        return _Recording(value, path, seen)
    if isinstance(value, list):
        return [_wrap(item, path, seen) for item in value]
    return value


def keys_read(data: dict) -> set[str]:
    """Every key path parse_config asks for while parsing data (which must load)."""
    seen: set[str] = set()
    parse_config(_wrap(data, "", seen), source="<recorded>")
    return seen


def keys_present(data: Any, path: str = "") -> set[str]:
    """Every key path in a YAML document, list items adding no segment."""
    if isinstance(data, list):
        return set().union(*(keys_present(item, path) for item in data)) if data else set()
    if not isinstance(data, dict):
        return set()
    found = set()
    for key, value in data.items():
        key_path = _join(path, key)
        found |= {key_path} | keys_present(value, key_path)
    return found


def generic(path: str) -> str:
    """The path with an operator-chosen name replaced by '*' (roles.reader.permissions -> roles.*.permissions)."""
    if path.startswith(FREE_CONTENT + "."):
        return FREE_CONTENT + ".*"
    for free in FREE_KEYS:
        if path.startswith(free + "."):
            rest = path[len(free) + 1:].split(".", 1)
            return ".".join([free, "*", *rest[1:]])
    return path


def accepted_keys() -> set[str]:
    """Every key path the parser accepts, operator-chosen names as '*'."""
    read = {generic(path) for variant in example_variants() for path in keys_read(variant)}
    return read | {f"{free}.*" for free in (*FREE_KEYS, FREE_CONTENT)}
