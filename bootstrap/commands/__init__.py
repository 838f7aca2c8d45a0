from . import check_expiry, generate_certs, init, mint_tokens, register_namespaces, render_config, rotate, serve_jwks
from . import backup, compose_env, export_helm, serve_codec, serve_exchange, serve_expiry_metrics, serve_ui_gate, show_admin_password

COMMANDS = {
    "init": init,
    "generate-certs": generate_certs,
    "mint-tokens": mint_tokens,
    "render-config": render_config,
    "serve-jwks": serve_jwks,
    "register-namespaces": register_namespaces,
    "check-expiry": check_expiry,
    "rotate": rotate,
    "serve-codec": serve_codec,
    "serve-exchange": serve_exchange,
    "export-helm": export_helm,
    "backup": backup,
    "show-admin-password": show_admin_password,
    "serve-expiry-metrics": serve_expiry_metrics,
    "compose-env": compose_env,
    "serve-ui-gate": serve_ui_gate,
}
