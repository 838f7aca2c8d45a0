"""show-admin-password: print the Web UI admin's generated password once, then forget it."""

from __future__ import annotations

from ..errors import BundleError
from ..ops.oidc import admin_password_path
from ..store import locked, read_optional, remove
from .common import load, standard

HELP = "print the Web UI admin's first password once (it is deleted after; Dex keeps only a bcrypt hash)"


def add_parser(sub, name):
    parser = sub.add_parser(name, help=HELP, description=HELP + ".")
    standard(parser, force=False)
    parser.set_defaults(run=run)


def run(args) -> int:
    config, layout = load(args, keys=False)
    if not config.oidc.enabled:
        where = f"users log in at {config.oidc.external.issuer}" if config.oidc.external else "there is no Web UI login"
        raise BundleError(f"oidc.enabled is false: no embedded Dex, so no admin password ({where})")
    path = admin_password_path(layout)
    with locked(layout):
        secret = read_optional(path)
        if secret is None:
            raise BundleError(
                f"{path} is gone: the password was shown already. To set a new one, delete "
                f"{path.parent}/admin.bcrypt and run init (make up) again, then this command"
            )
        remove(path)
    print(f"Web UI: {config.ui_url}   user: {config.oidc.admin.email}   password: {secret.decode().strip()}")
    print("Shown once: it is deleted now. Change it by adding users in bundle.yaml (oidc.users).")
    return 0
