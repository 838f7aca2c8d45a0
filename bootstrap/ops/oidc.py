"""Dex, the Web UI's OIDC provider (and Grafana's): its rendered config, the UI's and Grafana's
client secrets and the first admin's password.

The admin password is generated once, kept in private/oidc/admin.password only until
`show-admin-password` prints it (then deleted), and reaches Dex only as a bcrypt hash. The client
secrets live in ui/ and grafana/ (each client sends its own to Dex) and in Dex's own config; none
reaches a browser.
Upstream connector secrets are read from the files bundle.yaml names, at render time.
"""

from __future__ import annotations

import base64
import secrets
from pathlib import Path

import bcrypt
import yaml

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..core.config import BundleConfig, ExternalIssuer, OIDCConnector, OIDCUser
from ..core.login_groups import grafana_role_path
from ..errors import BundleError
from .plan import FORCE_HINT
from .render import header
from ..store import CERT_MODE, KEY_MODE, Action, Layout, Skip, Write, read_optional, read_secret

# Dex's static users need a stable unique id: derived from the user name, so renaming is explicit.
USER_ID_PREFIX = "temporal-bundle-"
BCRYPT_COST = 12
# The device flow is off: v2.45.1 leaks the client secret through it (fixed after that release).
GRANT_TYPES = ("authorization_code", "refresh_token")
# Dex's state, on the dex-data named volume (docker-compose.prod.yml).
DEX_DB = "/var/dex/dex.db"


def admin_password_path(layout: Layout) -> Path:
    return layout.private / "oidc" / "admin.password"


def admin_hash_path(layout: Layout) -> Path:
    return layout.private / "oidc" / "admin.bcrypt"


def client_secret_path(layout: Layout) -> Path:
    return layout.root / "ui" / "oidc-client-secret"


def grafana_secret_path(layout: Layout) -> Path:
    return layout.root / "grafana" / "oidc-client-secret"


# Grafana's client id at Dex (its generic OAuth login; compose profile monitoring).
GRAFANA_CLIENT_ID = "grafana"
# `temporal-bundle login`'s client at Dex: public (PKCE, no secret), no redirect URI listed, so Dex
# admits only http://127.0.0.1:<any port>/... loopback redirects (RFC 8252) and its own OOB page.
CLI_CLIENT_ID = "temporal-cli"


def grafana_role_path_file(layout: Layout) -> Path:
    """Grafana's role_attribute_path, read by grafana.ini as $__file{...}: it follows oidc.groups."""
    return layout.root / "grafana" / "role-attribute-path"


def dex_config_path(layout: Layout) -> Path:
    return layout.root / "dex" / "config.yaml"


def issuer_ca_path(layout: Layout) -> Path:
    """An external issuer's CA (oidc.external.ca_file), alone in its directory: the server and the
    UI add the directory to Go's roots (SSL_CERT_DIR), the codec server loads the file."""
    return layout.root / "trust" / "oidc-issuer" / "ca.pem"


def jwks_cafiles(config, layout: Layout) -> tuple[Path, ...]:
    """What a JWKS fetch trusts besides the system CAs: the bundle's CA (our JWKS server, Dex),
    plus an external issuer's own CA if it has one."""
    external = config.oidc.external
    return (layout.trust_bundle, *((issuer_ca_path(layout),) if external and external.ca_file else ()))


def plan_oidc(config: BundleConfig, layout: Layout, force: bool) -> list[Action]:
    if config.oidc.external is not None:
        return plan_external(config.oidc.external, layout)
    if not config.oidc.enabled:
        return []
    actions, admin_hash = _plan_admin(layout, force)
    secret_action, secret = _plan_secret(client_secret_path(layout), force)
    grafana_action, grafana_secret = _plan_secret(grafana_secret_path(layout), force)
    actions += [secret_action, grafana_action,
                _copy(grafana_role_path_file(layout), grafana_role_path(config.oidc).encode(), CERT_MODE)]
    text = render_dex_config(config, layout, admin_hash, secret, grafana_secret)
    existing = read_optional(dex_config_path(layout))
    if existing == text:
        actions.append(Skip(dex_config_path(layout)))
    else:
        reason = "created" if existing is None else "updated: config changed"
        actions.append(Write(dex_config_path(layout), text, KEY_MODE, reason))
    return actions


def plan_external(external: ExternalIssuer, layout: Layout) -> list[Action]:
    """No Dex: the UI's client secret is copied from the operator's file into ui/ (where the UI's
    entrypoint reads it), and the issuer's CA, if any, into trust/oidc-issuer/."""
    secret = read_secret(external.client_secret_file, "oidc.external.client_secret_file")
    actions = [_copy(client_secret_path(layout), (secret + "\n").encode(), KEY_MODE)]
    if external.ca_file:
        actions.append(_copy(issuer_ca_path(layout), _read_ca(external.ca_file), CERT_MODE))
    return actions


def _read_ca(path: str) -> bytes:
    where = "oidc.external.ca_file"
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BundleError(f"{where}: cannot read {path}: {exc.strerror or exc}") from None
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise BundleError(f"{where}: {path} holds no PEM certificate") from None
    return b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in certs)


def _copy(path: Path, data: bytes, mode: int) -> Action:
    existing = read_optional(path)
    if existing == data:
        return Skip(path)
    return Write(path, data, mode, "created" if existing is None else "updated: config changed")


def _plan_admin(layout: Layout, force: bool) -> tuple[list[Action], str]:
    existing = read_optional(admin_hash_path(layout))
    if existing is not None and not force:
        value = existing.decode("ascii", errors="replace").strip()
        if not value.startswith("$2") or len(value) != 60:
            raise BundleError(f"{admin_hash_path(layout)} is not a bcrypt hash; {FORCE_HINT}")
        shown = admin_password_path(layout)
        return [Skip(admin_hash_path(layout))] + ([Skip(shown)] if shown.exists() else []), value
    password = secrets.token_urlsafe(18)
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(BCRYPT_COST)).decode("ascii")
    reason = "created" if existing is None else "replaced (--force)"
    return [
        Write(admin_password_path(layout), (password + "\n").encode(), KEY_MODE, reason),
        Write(admin_hash_path(layout), (hashed + "\n").encode(), KEY_MODE, reason),
    ], hashed


def _plan_secret(path: Path, force: bool) -> tuple[Action, str]:
    existing = read_optional(path)
    if existing is not None and not force:
        value = existing.decode("ascii", errors="replace").strip()
        if len(value) < 32 or not value.replace("-", "").replace("_", "").isalnum():
            raise BundleError(f"{path} is not a client secret we wrote; {FORCE_HINT}")
        return Skip(path), value
    value = secrets.token_urlsafe(32)
    return Write(path, (value + "\n").encode(), KEY_MODE, "created" if existing is None else "replaced (--force)"), value


def render_dex_config(config: BundleConfig, layout: Layout, admin_hash: str, client_secret: str,
                      grafana_secret: str) -> bytes:
    oidc, root = config.oidc, Path(config.bundle_dir)
    document = {
        "issuer": oidc.issuer,
        # Refresh tokens, signing keys and auth requests survive a restart (the dex-data volume);
        # users and the client still come from this file.
        "storage": {"type": "sqlite3", "config": {"file": DEX_DB}},
        "web": {"https": f"0.0.0.0:{oidc.port}", "tlsCert": str(root / "dex" / "server.pem"),
                "tlsKey": str(root / "dex" / "server.key")},
        "telemetry": {"http": "127.0.0.1:5558"},
        "logger": {"level": "info", "format": "json"},
        "oauth2": {"grantTypes": list(GRANT_TYPES), "responseTypes": ["code"], "skipApprovalScreen": True},
        "expiry": {"idTokens": f"{int(oidc.token_lifetime.total_seconds())}s", "signingKeys": "6h"},
        "staticClients": [{
            "id": config.jwt.audience,
            "name": "Temporal Web UI",
            "secret": client_secret,
            "redirectURIs": [f"{config.ui_url}/auth/sso/callback"],
            "trustedPeers": [CLI_CLIENT_ID],  # the CLI may ask for a token with the server's audience
        }, {
            "id": GRAFANA_CLIENT_ID,
            "name": "Grafana",
            "secret": grafana_secret,
            "redirectURIs": [f"{config.grafana_url}/login/generic_oauth"],
        }, {"id": CLI_CLIENT_ID, "name": "Temporal CLI (temporal-bundle login)", "public": True}],
        "enablePasswordDB": True,
        "staticPasswords": [_static_user(config, oidc.admin, admin_hash)]
        + [_static_user(config, user, user.password_hash) for user in oidc.users],
    }
    if oidc.connectors:
        document["connectors"] = [_connector(c) for c in oidc.connectors]
    body = yaml.safe_dump(document, sort_keys=False, default_flow_style=False)
    return f"{header(config)}\n# Dex {oidc.issuer}: mode 0600, holds the UI's and Grafana's client secrets.\n{body}".encode()


def _static_user(config: BundleConfig, user: OIDCUser, password_hash: str) -> dict:
    return {
        "email": user.email,
        "username": user.username,
        "userID": USER_ID_PREFIX + user.username,
        "hash": password_hash,
        # Dex (v2.45.0+) puts these in the token's `groups`: the server's permissions claim.
        "groups": list(config.oidc.permissions_of(user)),
    }


def _connector(connector: OIDCConnector) -> dict:
    body = dict(connector.config)
    for key, path in connector.secret_files:
        body[key] = read_secret(path, f"connector {connector.id}: {key}_file")
        if connector.type == "ldap" and key == "rootCAData":
            # Dex reads it as JSON bytes: base64 of the PEM. Dex's container mounts nothing but its
            # config, so the directory's CA travels inside it.
            body[key] = base64.b64encode((body[key] + "\n").encode()).decode()
    return {"type": connector.type, "id": connector.id, "name": connector.name, "config": body}


def login_mapping(config: BundleConfig):
    """oidc.groups for the login issuer's tokens (the codec server): the embedded Dex's, or an
    external IdP's when oidc.groups maps its groups; None otherwise (no Dex, or an IdP that writes
    permissions itself)."""
    from ..core.login_groups import LoginMapping

    oidc = config.oidc
    if not oidc.enabled and not (oidc.external is not None and oidc.login_exchange):
        return None
    return LoginMapping(oidc.login_issuer, oidc, exchanged=bool(oidc.login_exchange))


def login_policy(config: BundleConfig, layout: Layout):
    """The token exchange's policy for people's login tokens (servers/exchange.LoginPolicy): Dex's
    issuer and keys (discovery, verified with the bundle's CA), or an external IdP's (its jwks_uri,
    verified with the system's roots and its own CA file); jwt.audience; oidc.groups."""
    from ..core.config.workload import WorkloadIssuer
    from ..core.login_groups import LoginPolicy

    oidc = config.oidc
    if not oidc.login_exchange:
        return None
    if oidc.external is not None:
        issuer = WorkloadIssuer(name="login", type="oidc", issuer=oidc.external.issuer, audience=config.jwt.audience,
                                jwks_uri=oidc.external.jwks_uri,
                                ca_file=str(issuer_ca_path(layout)) if oidc.external.ca_file else "")
    else:
        issuer = WorkloadIssuer(name="dex", type="oidc", issuer=oidc.issuer, audience=config.jwt.audience,
                                ca_file=str(layout.trust_bundle))
    return LoginPolicy(issuer, oidc)
