"""One module per command. A command's module is imported only when it runs (or for the top-level
help), so a container running one command does not pay for every other command's imports."""

from __future__ import annotations

import importlib
from types import ModuleType

# command name -> its module under bootstrap.commands, in the order `--help` lists them
COMMANDS = {
    "init": "init",
    "generate-certs": "generate_certs",
    "mint-tokens": "mint_tokens",
    "render-config": "render_config",
    "serve-jwks": "serve_jwks",
    "register-namespaces": "register_namespaces",
    "check-expiry": "check_expiry",
    "rotate": "rotate",
    "serve-codec": "serve_codec",
    "serve-exchange": "serve_exchange",
    "export-helm": "export_helm",
    "backup": "backup",
    "show-admin-password": "show_admin_password",
    "serve-expiry-metrics": "serve_expiry_metrics",
    "compose-env": "compose_env",
    "serve-ui-gate": "serve_ui_gate",
    "verify": "verify",
    "config-schema": "config_schema",
    "migrate-codec-keys": "migrate_codec_keys",
    "export-role": "export_role",
    "pitr": "pitr",
    "check-backup": "check_backup",
    "login": "login",
    "logout": "logout",
}


def command_module(name: str) -> ModuleType:
    return importlib.import_module(f"{__name__}.{COMMANDS[name]}")
