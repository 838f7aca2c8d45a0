"""init: everything a fresh cluster needs, in one idempotent step (what the compose bootstrap runs)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..core.pki import utcnow
from ..ops.generate import plan_generate
from ..ops.oidc import plan_oidc
from ..ops.pgbackrest import plan_pgbackrest
from ..ops.plan import plan_registrar_token, plan_tokens
from ..ops.render_plan import plan_render
from ..store import apply, locked
from .common import load, report, standard

HELP = "generate-certs + mint-tokens + render-config (+ Dex's config), in one idempotent run"


def add_parser(sub, name):
    parser = sub.add_parser(name, help=HELP, description=HELP + ".")
    standard(parser)
    parser.add_argument("--templates", type=Path, help="templates directory (env BUNDLE_TEMPLATES_DIR)")
    parser.add_argument(
        "--server-image", default=os.environ.get("TEMPORAL_SERVER_IMAGE", ""),
        help="the Temporal server image about to start (env TEMPORAL_SERVER_IMAGE; compose passes it): its release "
        "is recorded in private/cluster.json, and one older than the recorded release is refused",
    )
    parser.set_defaults(run=run)


def run(args) -> int:
    config, layout = load(args)
    now = utcnow()
    with locked(layout):
        # Everything is planned before anything is written: a corrupt token or a hand-edited
        # config file stops the run with the disk untouched.
        pki = plan_generate(config, layout, args.force, now)
        token_actions, _ = plan_tokens(config, layout, pki.signing_key, args.force, now)
        registrar = plan_registrar_token(config, layout, pki.signing_key, args.force, now)
        rendered = plan_render(config, layout, args.force, args.templates, args.server_image)
        oidc = plan_oidc(config, layout, args.force)
        wal = plan_pgbackrest(config, layout, args.force, args.templates) if config.persistence.driver == "postgres" else []
        actions = apply(layout, pki.actions + token_actions + registrar + rendered + oidc + wal)
    report(layout, actions, args.quiet)
    if pki.warning:
        print(pki.warning, file=sys.stderr)
    return 0
