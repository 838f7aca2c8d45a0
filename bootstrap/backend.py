"""Where the root keys live: the `keys.backend` of bundle.yaml, `file` (default) or `pkcs11`.

Everything that needs a CA key, the JWT signing key or the data keys' KEK asks here, so the
rest of the code does not know which backend holds them."""

from __future__ import annotations

from .kek import FileKek, Kek, plan_file_kek
from .store import Action, Layout


def codec_kek(config, layout: Layout) -> tuple[Kek, list[Action]]:
    """The KEK that wraps the payload data keys, and the writes that create it if needed."""
    return plan_file_kek(layout)


def codec_kek_for_serving(config, layout: Layout) -> Kek:
    """The KEK a running codec server unwraps with; never creates one."""
    return FileKek.load(layout.codec_kek)
