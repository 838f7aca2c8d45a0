"""compose-env: print the compose variables bundle.yaml decides (ports, OIDC names, audience, and
whether the Dex container runs at all: DEX_SCALE=0 with an external issuer).

`make up` writes them to build/bundle.env and hands that to compose (--env-file), so the UI's
callback URL, Dex's issuer and the published ports cannot drift from bundle.yaml. Writes nothing.
"""

from __future__ import annotations

from pathlib import Path

from ..core.config import load_config
from ..errors import BundleError
from ..ops.render import render_all
from .common import add_config

HELP = "print the compose .env rendered from bundle.yaml (make up passes it to compose)"


def add_parser(sub, name):
    parser = sub.add_parser(name, help=HELP, description=HELP + ".")
    add_config(parser)
    parser.add_argument("--templates", type=Path, help="templates directory (env BUNDLE_TEMPLATES_DIR)")
    parser.set_defaults(run=run)


# The compose file always serves the Web UI with login: the server demands a token on every call,
# so a UI without one only shows "Request unauthorized". oidc.enabled: false without
# oidc.external is for a bundle without the compose UI (the local server tests, Kubernetes exports).
NO_LOGIN = ("oidc.enabled is false and there is no oidc.external: the compose stack's Web UI needs a login (the "
            "server refuses calls without a token); set oidc.enabled: true (Dex) or oidc.external (your IdP)")


def run(args) -> int:
    config = load_config(args.config)
    if not config.oidc.ui_login:
        raise BundleError(NO_LOGIN)
    print(render_all(config, args.templates)["compose.env"], end="")
    return 0
