"""export-role: what an application of one role needs, and nothing that opens another namespace."""

from __future__ import annotations

from pathlib import Path

from ..ops.export_role import plan_export
from ..store import Layout, apply
from .common import load, report, standard

HELP = "copy a role's client certificate, key, token, the CA and its key-service settings to --dest"


def add_parser(sub, name):
    parser = sub.add_parser(name, help=HELP, description=HELP + (
        ". A role that writes to namespaces gets key-service.json (where its workers fetch those namespaces' "
        "data keys with their own certificate and token), never codec-keys/ or a key-encryption key."))
    standard(parser, force=False)
    parser.add_argument("--role", required=True, help="the role (bundle.yaml roles:) to export")
    parser.add_argument("--dest", required=True, help="directory to write to")
    parser.set_defaults(run=run)


def run(args) -> int:
    config, layout = load(args, keys=False)
    dest = Layout(Path(args.dest).resolve())
    report(dest, apply(dest, plan_export(config, layout, args.role, dest)), args.quiet)
    return 0
