"""The `oidc:` section: the embedded Dex (its users, groups and upstream connectors) or an external
issuer in its place."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from ..claims import PERMISSIONS_CLAIM
from ..permissions import SYSTEM_NAMESPACE, implied
from ...errors import BundleError
from .reader import Section, check_permission
from .sections import NetworkConfig

# Upstream identity providers Dex may federate (Dex's connector type names).
OIDC_CONNECTOR_TYPES = ("github", "google", "oidc", "ldap")
BCRYPT_HASH = re.compile(r"^\$2[aby]\$(1[0-9]|2[0-9]|3[01])\$[./A-Za-z0-9]{53}$")
OIDC_USER_NAME = re.compile(r"^[a-z][a-z0-9._-]{0,63}$")
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
# A group as a directory names it (`payments-oncall`, `cn=sre,ou=groups,dc=example,dc=com`,
# `acme:platform`): printable, no surrounding spaces, at most 512 characters.
GROUP_NAME = re.compile(r"^[^\s\x00-\x1f\x7f](?:[^\x00-\x1f\x7f]{0,510}[^\s\x00-\x1f\x7f])?$")


@dataclass(frozen=True)
class OIDCUser:
    username: str
    email: str
    groups: tuple[str, ...]  # names from OIDCConfig.groups
    password_hash: str = ""  # bcrypt; empty for the admin, whose hash the bootstrap generates


@dataclass(frozen=True)
class OIDCConnector:
    """An upstream identity provider for Dex. `config` is passed to Dex as is, except that each
    `<key>_file` entry is replaced by `<key>` with the file's content (secrets stay out of here)."""

    type: str
    id: str
    name: str
    config: tuple[tuple[str, Any], ...]
    secret_files: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ExternalIssuer:
    """A company IdP (Okta, Entra ID, Keycloak, Google...) in place of the embedded Dex. Its JWKS
    URL is given, not discovered: the bootstrap renders with no network (compose-env, --network
    none), and the server accepts only an http(s) key source it can fetch at start."""

    issuer: str
    jwks_uri: str
    client_id: str
    client_secret_file: str
    ca_file: str = ""  # a PEM the server, UI and codec trust for the issuer (a private CA)
    groups_claim: str = "groups"
    scopes: tuple[str, ...] = ("openid", "profile", "email")
    use_id_token: bool = False  # the UI sends the ID token (aud = client id) instead of the access token


@dataclass(frozen=True)
class OIDCConfig:
    """Dex, the Web UI's OIDC provider. The UI's client id is jwt.audience: Temporal checks one
    audience, and Dex sets `aud` to the client id, so role tokens and UI logins share it."""

    enabled: bool = True
    host: str = "auth.localhost"  # the issuer's host: the browser and the UI container both resolve it
    port: int = 5556
    ui_public_host: str = "localhost"  # where the browser opens the UI: https://<this>:<ui_port>
    token_lifetime: timedelta = timedelta(hours=1)
    admin: OIDCUser = OIDCUser("admin", "admin@example.com", ("admins",))
    # group -> permissions, for the bundle's users, every connector's groups and, when given next
    # to `external`, the company IdP's groups (core/login_groups)
    groups: tuple[tuple[str, tuple[str, ...]], ...] = (("admins", ("temporal-system:admin",)),)
    users: tuple[OIDCUser, ...] = ()
    connectors: tuple[OIDCConnector, ...] = ()
    sans: tuple[str, ...] = ()
    external: ExternalIssuer | None = None  # only with enabled: false

    @property
    def issuer(self) -> str:
        return f"https://{self.host}:{self.port}/dex"

    @property
    def ui_login(self) -> bool:
        """The Web UI logs users in: through the embedded Dex or an external issuer."""
        return self.enabled or self.external is not None

    @property
    def login_exchange(self) -> bool:
        """People's tokens carry groups the bundle did not write: Dex federating an upstream
        directory (oidc.connectors), or an external IdP with oidc.groups mapping its groups. The
        frontend then stops trusting the login issuer's keys, and the UI gate exchanges a person's
        token at the token exchange for a bundle token holding what oidc.groups maps their groups
        to. With only the bundle's own users, Dex's config already holds their mapped permissions
        (applied at render) and Dex's keys stay a key source; an external IdP without oidc.groups
        writes permissions in its groups claim itself."""
        return (self.enabled and bool(self.connectors)) or (self.external is not None and bool(self.groups))

    @property
    def login_issuer(self) -> str:
        return self.external.issuer if self.external else self.issuer

    @property
    def permissions_claim(self) -> str:
        """The claim the frontend reads permissions from: an external IdP's groups claim when it
        writes permissions there itself, else the bundle's."""
        return self.external.groups_claim if self.external and not self.login_exchange else PERMISSIONS_CLAIM

    @property
    def login_groups_claim(self) -> str:
        """The claim the login issuer's tokens carry a person's groups in."""
        return self.external.groups_claim if self.external else PERMISSIONS_CLAIM

    def permissions_of(self, user: OIDCUser) -> tuple[str, ...]:
        mapping = dict(self.groups)
        return tuple(dict.fromkeys(p for group in user.groups for p in mapping[group]))


# --------------------------------------------------------------------------- parsing


def parse_oidc(sec: Section, namespaces: set[str], net: NetworkConfig) -> OIDCConfig:
    d = OIDCConfig
    enabled = sec.boolean("enabled", True)
    sec.seen.add("external")
    external = _parse_external(sec) if sec.data.get("external") is not None else None
    if external is not None and enabled:
        raise BundleError(f"{sec.where}: external needs enabled: false (the embedded Dex and an external issuer "
                          "exclude each other)")
    if "groups" in sec.data:
        groups = _parse_oidc_groups(sec.section("groups"), namespaces)
    else:  # the default maps Dex's admin user's group; an external IdP's groups are mapped only when asked
        groups = () if external is not None else d.groups
    oidc = OIDCConfig(
        enabled=enabled,
        host=sec.host("host", d.host),
        port=sec.port("port", d.port),
        ui_public_host=sec.host("ui_public_host", d.ui_public_host),
        token_lifetime=sec.duration("token_lifetime", d.token_lifetime),
        admin=_parse_oidc_user(sec.section("admin"), admin=True) if "admin" in sec.data else d.admin,
        groups=groups,
        users=tuple(_parse_oidc_user(Section(u, f"{sec.where}: users[{i}]")) for i, u in enumerate(sec.list("users"))),
        connectors=tuple(_parse_connector(Section(c, f"{sec.where}: connectors[{i}]"))
                         for i, c in enumerate(sec.list("connectors"))),
        sans=sec.names("sans"),
        external=external,
    )
    sec.seen.add("groups")
    sec.done()
    if external is None:
        _check_oidc(oidc, sec.where, net)
    return oidc


# Keys that configure the embedded Dex: meaningless (so refused) next to an external issuer.
# (`groups` is not one: next to `external` it maps the IdP's groups.)
DEX_ONLY_KEYS = ("host", "port", "token_lifetime", "admin", "users", "connectors", "sans")
# Registered JWT claims: never a permissions claim.
REGISTERED_CLAIMS = ("iss", "sub", "aud", "exp", "nbf", "iat", "jti", "azp", "nonce")
CLAIM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:/-]{0,127}$")


def _parse_external(oidc: Section) -> ExternalIssuer:
    for key in DEX_ONLY_KEYS:
        if oidc.data.get(key) is not None:
            raise BundleError(f"{oidc.where}: {key} configures the embedded Dex; with external, users and groups "
                              "live in your identity provider")
    sec = oidc.section("external")
    use_id_token = sec.boolean("use_id_token", False)
    scopes = tuple(sec.list("scopes")) or ExternalIssuer.scopes
    external = ExternalIssuer(
        issuer=sec.https_url("issuer", required=True),
        jwks_uri=sec.https_url("jwks_uri", required=True),
        client_id=sec.string("client_id", ""),
        client_secret_file=sec.file_path("client_secret_file", required=True),
        ca_file=sec.file_path("ca_file", required=False),
        groups_claim=sec.string("groups_claim", ExternalIssuer.groups_claim),
        scopes=scopes,
        use_id_token=use_id_token,
    )
    sec.done()
    if not external.client_id or external.client_id != external.client_id.strip() or "," in external.client_id:
        raise BundleError(f"{sec.where}: client_id is required (the OIDC client id your identity provider gave the UI)")
    if not CLAIM_NAME.match(external.groups_claim) or external.groups_claim in REGISTERED_CLAIMS:
        raise BundleError(f"{sec.where}: groups_claim {external.groups_claim!r} is not a claim name for permissions")
    if any(not isinstance(s, str) or not re.match(r"^[!#-\[\]-~]+$", s) for s in scopes) or "openid" not in scopes:
        raise BundleError(f"{sec.where}: scopes must be a list of scope names including 'openid', got {list(scopes)!r}")
    return external


def _parse_oidc_groups(sec: Section, namespaces: set[str]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    groups = []
    for name, permissions in sec.data.items():
        where = f"{sec.where}: {name}"
        if not isinstance(name, str) or not GROUP_NAME.match(name):
            raise BundleError(f"{sec.where}: {name!r}: invalid group name (the name your directory gives it: "
                              "printable, no surrounding spaces, at most 512 characters)")
        if not isinstance(permissions, list) or not permissions:
            raise BundleError(f"{where}: expected a non-empty list of '<namespace>:<role>' permissions")
        groups.append((name, tuple(check_permission(p, namespaces, where) for p in permissions)))
        sec.seen.add(name)
    return tuple(groups)


def _parse_oidc_user(sec: Section, admin: bool = False) -> OIDCUser:
    user = OIDCUser(
        username=sec.string("username", "admin" if admin else ""),
        email=sec.string("email", "admin@example.com" if admin else ""),
        groups=tuple(sec.list("groups") or (["admins"] if admin else [])),
        password_hash="" if admin else sec.string("password_hash", ""),
    )
    sec.done()
    if not all(isinstance(group, str) for group in user.groups):
        raise BundleError(f"{sec.where}: groups must be a list of group names, got {list(user.groups)!r}")
    if not OIDC_USER_NAME.match(user.username):
        raise BundleError(f"{sec.where}: username {user.username!r}: lower-case letters, digits, '.', '_', '-'")
    if not EMAIL.match(user.email):
        raise BundleError(f"{sec.where}: email {user.email!r} is not an e-mail address (Dex logs users in by it)")
    if not admin and not BCRYPT_HASH.match(user.password_hash):
        raise BundleError(f"{sec.where}: password_hash must be a bcrypt hash ($2b$...), never a password")
    return user


def _parse_connector(sec: Section) -> OIDCConnector:
    kind = sec.choice("type", "", OIDC_CONNECTOR_TYPES)
    ident, name = sec.string("id", kind), sec.string("name", kind)
    body = sec.section("config")
    sec.done()
    config, files = [], []
    for key, value in body.data.items():
        if not isinstance(key, str):
            raise BundleError(f"{body.where}: keys must be strings")
        if key.endswith("_file"):
            if not isinstance(value, str) or not value.startswith("/"):
                raise BundleError(f"{body.where}: {key} must be an absolute path to a file holding the secret")
            files.append((key.removesuffix("_file"), value))
        elif re.search(r"secret|password", key, re.IGNORECASE):
            raise BundleError(f"{body.where}: {key}: secrets are read from files; use {key}_file: /path")
        else:
            config.append((key, value))
    if not OIDC_USER_NAME.match(ident):
        raise BundleError(f"{sec.where}: id {ident!r}: lower-case letters, digits, '.', '_', '-'")
    if kind == "ldap":
        check_ldap_connector(dict(config), dict(files), body.where)
    return OIDCConnector(kind, ident, name, tuple(config), tuple(files))


# Dex v2.45.1's LDAP connector (connector/ldap/ldap.go, Config): the options it reads. Dex decodes
# connector configs leniently, so a misspelt key would be dropped silently; here it is an error.
LDAP_KEYS = ("host", "insecureNoSSL", "insecureSkipVerify", "startTLS", "rootCA", "clientCert", "clientKey",
             "rootCAData", "bindDN", "usernamePrompt", "userSearch", "groupSearch")
LDAP_USER_SEARCH = ("baseDN", "filter", "username", "scope", "idAttr", "emailAttr", "nameAttr",
                    "preferredUsernameAttr", "emailSuffix")
LDAP_GROUP_SEARCH = ("baseDN", "filter", "scope", "userMatchers", "nameAttr")
LDAP_MATCHER = ("userAttr", "groupAttr", "recursionGroupAttr")
LDAP_SCOPES = ("sub", "one")


def _ldap_strings(body: Any, known: tuple[str, ...], required: tuple[str, ...], where: str) -> dict:
    if not isinstance(body, dict):
        raise BundleError(f"{where}: expected a mapping")
    for key, value in body.items():
        if key not in known:
            raise BundleError(f"{where}: unknown key {key!r} (Dex's LDAP connector reads {', '.join(known)})")
        if key != "userMatchers" and not isinstance(value, (str, bool)):
            raise BundleError(f"{where}: {key} must be a string, got {value!r}")
    for key in required:
        if not isinstance(body.get(key), str) or not body[key].strip():
            raise BundleError(f"{where}: {key} is required")
    scope = body.get("scope")
    if scope is not None and scope not in LDAP_SCOPES:
        raise BundleError(f"{where}: scope must be one of {', '.join(LDAP_SCOPES)}, got {scope!r}")
    return body


def check_ldap_connector(config: dict, files: dict, where: str) -> None:
    """What Dex's LDAP connector needs to log anyone in (it starts without these and fails every
    login), and no option that weakens it: passwords cross this connection."""
    if "bindPW" in config:
        raise BundleError(f"{where}: bindPW: secrets are read from files; use bindPW_file: /path")
    for key in config:
        if key not in LDAP_KEYS:
            raise BundleError(f"{where}: unknown key {key!r} (Dex's LDAP connector reads {', '.join(LDAP_KEYS)})")
    if not isinstance(config.get("host"), str) or not config["host"].strip():
        raise BundleError(f"{where}: host " + ("must be a string" if "host" in config else "is required")
                          + " (host:port of the directory, LDAPS on 636 unless startTLS)")
    for key in ("insecureNoSSL", "startTLS", "insecureSkipVerify"):
        if key in config and not isinstance(config[key], bool):
            raise BundleError(f"{where}: {key} must be true or false")
    if config.get("insecureNoSSL"):
        raise BundleError(f"{where}: insecureNoSSL sends every password in clear; use LDAPS or startTLS")
    if config.get("insecureSkipVerify"):
        raise BundleError(f"{where}: insecureSkipVerify accepts any certificate; give rootCA instead")
    for key in files:
        if key not in ("bindPW", "rootCAData"):
            raise BundleError(f"{where}: {key}_file: Dex's LDAP connector reads files for bindPW and rootCAData only")
    if "rootCAData" in config:
        raise BundleError(f"{where}: rootCAData: give rootCAData_file: /path/to/ca.pem (read and encoded at render)")
    if "rootCA" in config and "rootCAData" in files:
        raise BundleError(f"{where}: rootCA and rootCAData_file exclude each other")
    if "bindDN" in config and "bindPW" not in files:
        raise BundleError(f"{where}: bindDN needs bindPW_file (the service account's password, read at render)")
    if "bindPW" in files and "bindDN" not in config:
        raise BundleError(f"{where}: bindPW_file needs bindDN")
    if "userSearch" not in config:
        raise BundleError(f"{where}: userSearch.baseDN is required")
    user = _ldap_strings(config["userSearch"], LDAP_USER_SEARCH, (), f"{where}: userSearch")
    for key in ("baseDN", "username", "idAttr", "emailAttr"):  # Dex v2.45.1 defaults none of them
        if not isinstance(user.get(key), str) or not user[key].strip():
            raise BundleError(f"{where}: userSearch.{key} is required")
    if "groupSearch" in config:
        group = _ldap_strings(config["groupSearch"], LDAP_GROUP_SEARCH, (), f"{where}: groupSearch")
        for key in ("baseDN", "nameAttr"):
            if not isinstance(group.get(key), str) or not group[key].strip():
                raise BundleError(f"{where}: groupSearch.{key} is required")
        matchers = group.get("userMatchers")
        if not isinstance(matchers, list) or not matchers:
            raise BundleError(f"{where}: groupSearch.userMatchers is required (e.g. [{{userAttr: DN, groupAttr: member}}])")
        for i, matcher in enumerate(matchers):
            _ldap_strings(matcher, LDAP_MATCHER, ("userAttr", "groupAttr"),
                          f"{where}: groupSearch.userMatchers[{i}]")


def _check_oidc(oidc: OIDCConfig, where: str, net: NetworkConfig) -> None:
    known = {name for name, _ in oidc.groups}
    users = (oidc.admin, *oidc.users)
    for user in users:
        for group in user.groups:
            if group not in known:
                raise BundleError(f"{where}: user {user.username!r}: group {group!r} is not defined in oidc.groups")
    for attr in ("username", "email"):
        values = [getattr(u, attr) for u in users]
        if len(set(values)) != len(values):
            raise BundleError(f"{where}: two users share the {attr} {sorted(v for v in values if values.count(v) > 1)[0]!r}")
    if f"{SYSTEM_NAMESPACE}:read" not in implied(oidc.permissions_of(oidc.admin)):
        raise BundleError(f"{where}: admin: needs a group granting '{SYSTEM_NAMESPACE}:admin' (the UI lists namespaces with it)")
    ids = [c.id for c in oidc.connectors]
    if len(set(ids)) != len(ids) or "local" in ids:
        raise BundleError(f"{where}: connector ids must be unique and not 'local' (the built-in password login)")
    if oidc.port in (net.ui_port, net.frontend_port, net.grafana_port):
        raise BundleError(f"{where}: port {oidc.port} is already used by the UI, Grafana or the frontend")

