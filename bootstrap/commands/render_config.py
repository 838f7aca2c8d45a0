"""render-config: the Temporal server config, dynamic config and compose .env from templates."""

from __future__ import annotations

from pathlib import Path

from ..ops.render_plan import plan_render
from ..store import apply, locked
from .common import load, report, standard

HELP = "render temporal.yaml, dynamic_config.yaml and compose.env into config/"


def add_parser(sub, name):
    parser = sub.add_parser(
        name, help=HELP, description=HELP + ". A file without our generated-by header is never replaced without --force."
    )
    standard(parser)
    parser.add_argument("--templates", type=Path, help="templates directory (env BUNDLE_TEMPLATES_DIR)")
    parser.set_defaults(run=run)


def run(args) -> int:
    config, layout = load(args, keys=False)
    with locked(layout):
        report(layout, apply(layout, plan_render(config, layout, args.force, args.templates)), args.quiet)
    return 0
