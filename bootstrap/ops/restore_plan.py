"""What a restore writes: only an archive of this bundle's own cluster, each bundle file that
differs, never through a symbolic link; bundle.yaml to where the operator asked."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import BundleError
from ..store import Action, Layout, Skip, Write, check_plain_path, read_optional
from .archive_manifest import CONFIG_NAME, Archive, ca_fingerprint
from .plan import DOMAINS

CONFIG_MODE = 0o644


def check_same_cluster(layout: Layout, archive: Archive) -> None:
    """A bundle that already has a server CA takes back only its own cluster's archive. The server
    CA names the cluster; each other domain CA both hold must match as well, since a server CA
    certificate is public and could front another cluster's keys in a crafted archive."""
    existing = read_optional(layout.ca_cert)
    if existing is None:
        return
    here = ca_fingerprint(existing, str(layout.ca_cert))
    if here != archive.server_ca_sha256:
        raise BundleError(
            f"the archive is from another cluster: its server CA is sha256 {archive.server_ca_sha256[:16]}..., "
            f"this bundle's ({layout.ca_cert}) is {here[:16]}...; refusing to mix them"
        )
    for domain in DOMAINS:
        cert = layout.domain_ca(domain)[0]
        ours, theirs = read_optional(cert), archive.entries.get(layout.relative(cert))
        if ours is not None and theirs is not None and \
                ca_fingerprint(ours, str(cert)) != ca_fingerprint(theirs.data, f"the archive's {theirs.name}"):
            raise BundleError(f"the archive is from another cluster: its {domain} CA differs from this bundle's "
                              f"({cert}), although the server CA is the same; refusing to mix them")


def plan_restore(layout: Layout, archive: Archive) -> list[Action]:
    """Write each bundle file that differs; nothing through a symbolic link under the bundle."""
    actions: list[Action] = []
    for entry in archive.bundle_files():
        path = layout.root / entry.name
        check_plain_path(layout.root, path)
        same = read_optional(path) == entry.data and stat.S_IMODE(path.stat().st_mode) == entry.mode
        actions.append(Skip(path, "already as in the archive") if same else Write(path, entry.data, entry.mode, "restored"))
    return actions


def plan_config(path: Path, archive: Archive) -> Action:
    """bundle.yaml to `path`: the file itself, never where a symbolic link there points."""
    if CONFIG_NAME not in archive.entries:
        raise BundleError("the archive holds no bundle.yaml")
    path = Path(os.path.abspath(path))
    check_plain_path(path.parent, path)
    data = archive.entries[CONFIG_NAME].data
    if read_optional(path) == data:
        return Skip(path, "already as in the archive")
    return Write(path, data, CONFIG_MODE, "restored")
