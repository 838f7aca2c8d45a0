"""export-helm: values for the official Temporal Helm chart, one Secret per consumer and manifests
for what the chart does not run, from the same bundle.yaml and the same CA and keys."""

from __future__ import annotations

import stat
from pathlib import Path

from ..errors import BundleError
from ..ops.export_helm import CHART_VERSION, render_export
from ..store import Action, Delete, Layout, Skip, Write, apply, locked, read_optional
from .common import add_config, add_out, load, report

HELP = f"export values.yaml (Temporal Helm chart {CHART_VERSION}), Secrets and manifests to DEST"
# The sub-directories we own in DEST: stale files there (a role removed, minting moved outside the
# cluster) are removed, so applying DEST never re-creates a Secret the bundle no longer has.
OWNED_DIRS = ("secrets", "manifests", "examples")


def add_parser(sub, name):
    parser = sub.add_parser(
        name, help=HELP, description=HELP + ". Deterministic: the same bundle gives the same bytes. "
        "No Secret holds a CA private key; the JWT signing key goes only into the token refresher's "
        "(kubernetes.token_minting: in-cluster, the default) or nowhere (outside)."
    )
    add_config(parser)
    add_out(parser)
    parser.add_argument("--dest", required=True, type=Path, help="directory to write values.yaml, secrets/ and manifests/ to")
    parser.add_argument("--templates", type=Path, help="templates directory (env BUNDLE_TEMPLATES_DIR)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only what changed")
    parser.set_defaults(run=run)


def plan(rendered: dict[str, tuple[bytes, int]], dest: Layout) -> list[Action]:
    actions: list[Action] = []
    for relative, (data, mode) in sorted(rendered.items()):
        path = dest.root / relative
        existing = read_optional(path)
        if existing == data and stat.S_IMODE(path.stat().st_mode) == mode:
            actions.append(Skip(path))
        else:
            actions.append(Write(path, data, mode, "created" if existing is None else "updated"))
    wanted = {dest.root / relative for relative in rendered}
    for directory in OWNED_DIRS:
        for path in sorted((dest.root / directory).glob("*.yaml")):
            if path not in wanted:
                actions.append(Delete(path, "no longer exported"))
    return actions


def run(args) -> int:
    config, layout = load(args)
    dest = Layout(args.dest.resolve())
    if dest.root == layout.root or layout.root in dest.root.parents:
        raise BundleError(f"--dest {dest.root} is inside the bundle directory; export somewhere else")
    with locked(layout):
        rendered = render_export(config, layout, args.templates)
    report(dest, apply(dest, plan(rendered, dest)), args.quiet)
    return 0
