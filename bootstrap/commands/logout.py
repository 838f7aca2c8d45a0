"""logout: delete what `login` wrote for a profile (its block in the temporal CLI config and the
session with the refresh token), and revoke the refresh token where the issuer allows it."""

from __future__ import annotations

import os
from pathlib import Path

from ..ops.login import default_cli_config, logout

HELP = "delete a terminal login's token files (profile block and refresh token); revoke where the issuer can"


def add_parser(sub, name):
    parser = sub.add_parser(name, help=HELP, description=HELP)
    parser.add_argument("--profile", default=os.environ.get("TEMPORAL_PROFILE") or "bundle",
                        help="the profile `login` wrote (env TEMPORAL_PROFILE; default: bundle)")
    parser.add_argument("--cli-config", default=None, metavar="FILE",
                        help="the temporal CLI's config file (default: TEMPORAL_CONFIG_FILE, else "
                        "~/.config/temporalio/temporal.toml)")
    parser.set_defaults(run=run)


def run(args) -> int:
    cli_config = (Path(args.cli_config).expanduser() if args.cli_config else default_cli_config()).absolute()
    result = logout(cli_config, args.profile)
    if not result.removed:
        print(f"no login for profile {args.profile} in {cli_config}; nothing removed")
        return 0
    for path in result.removed:
        print(f"removed the login of profile {args.profile} from {path}" if path == cli_config else f"deleted {path}")
    print(f"refresh token: {result.revoked}")
    return 0
