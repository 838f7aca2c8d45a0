"""The Secrets of an export: every Secret holds what one consumer needs and nothing else.

Read from the bundle directory; a missing file is one error naming it.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

from ...core.config import BundleConfig
from ...core.namespace_keys import custody_files
from ...errors import BundleError
from ...store import Layout, read_optional
from ..oidc import client_secret_path, dex_config_path, issuer_ca_path
from .names import names


@dataclass(frozen=True)
class Secret:
    name: str
    consumer: str  # what mounts it, said in an annotation
    type: str
    data: tuple[tuple[str, bytes], ...]
    # key -> bundle-relative path, for Secrets our own commands read from BUNDLE_DIR
    paths: tuple[tuple[str, str], ...] = ()

    def encoded(self) -> list[tuple[str, str]]:
        return [(key, base64.b64encode(value).decode()) for key, value in sorted(self.data)]


class BundleReader:
    """Reads bundle files, failing with one clear error naming the first missing one."""

    def __init__(self, layout: Layout):
        self.layout = layout

    def file(self, path: Path) -> bytes:
        data = read_optional(path)
        if data is None:
            raise BundleError(f"{path} is missing; run generate-certs (and mint-tokens) before export-helm")
        return data

    def leaf(self, directory: str, name: str) -> tuple[bytes, bytes]:
        cert, key = self.layout.leaf(directory, name)
        return self.file(cert), self.file(key)

    def trust(self, domain: str) -> tuple[bytes, bytes, bytes]:
        return tuple(self.file(p) for p in self.layout.trust_files(domain))  # type: ignore[return-value]


def secrets(config: BundleConfig, layout: Layout) -> list[Secret]:
    read, n = BundleReader(layout), names(config)
    server_ca = read.trust("server")[0]
    result = _server_pod_secrets(config, read, n) + _workload_secrets(config, read, n, server_ca)
    with_token = not config.workload_identity.enabled  # else no Secret holds an application's token
    result += [_role_secret(read, f"{n['role']}-{role.name}", role.name, server_ca, with_token) for role in config.roles]
    if refresher_exported(config):
        result.append(_refresher_secret(read, layout, n["refresher"]))
    if exchange_exported(config):
        result.append(_exchange_secret(read, n["exchange"], server_ca,
                                       login_issuer_ca=config.oidc.login_exchange and issuer_ca_exported(config)))
    return result + _oidc_secrets(config, read, n) + [_verify_secret(read, n["verify"])]


def _verify_secret(read: BundleReader, name: str) -> Secret:
    """The verify Job's own files: the CA certificates it checks servers with, nothing private.
    It presents the least role's pair and token from that role's Secret (kept fresh by the
    refresher) and forges the rest itself; no CA key and no signing key ever reaches it."""
    layout = read.layout
    return _bundle_secret(name, "verify Job (the server and internode CA certificates; no key)", {
        relative_path(layout, layout.trust_files(domain)[0]): read.trust(domain)[0] for domain in ("server", "internode")})


def relative_path(layout: Layout, path: Path) -> str:
    return str(path.relative_to(layout.root))


def _oidc_secrets(config: BundleConfig, read: BundleReader, n: dict[str, str]) -> list[Secret]:
    """The UI's OIDC client secret (for an env valueFrom, never inline in values.yaml) and, with
    the embedded Dex, Dex's own files: its config (the client secret, users' bcrypt hashes) and
    its TLS pair."""
    if not config.oidc.ui_login:
        return []
    layout = read.layout
    secret = read.file(client_secret_path(layout)).strip()
    result = [Secret(n["web_oidc"], "Web UI (TEMPORAL_AUTH_CLIENT_SECRET)", "Opaque", (("client-secret", secret),))]
    if config.oidc.enabled:
        cert, key = read.leaf("dex", "server")
        result.append(_bundle_secret(n["dex"], "Dex (its config: the UI's client secret and bcrypt hashes; its TLS pair)", {
            "dex/config.yaml": read.file(dex_config_path(layout)), "dex/server.pem": cert, "dex/server.key": key,
        }))
    return result


def issuer_ca_exported(config: BundleConfig) -> bool:
    return config.oidc.external is not None and bool(config.oidc.external.ca_file)


def refresher_exported(config: BundleConfig) -> bool:
    """With workload identity, workers get their tokens from the exchange: the bundle's signing
    key stays out of the cluster (tokens for admin-tools and the registration job are minted
    outside, as with token_minting: outside)."""
    return config.kubernetes.token_minting == "in-cluster" and not config.workload_identity.enabled


def exchange_exported(config: BundleConfig) -> bool:
    """The token exchange runs in the cluster for workers' service-account tokens (workload
    identity), for people's logins (oidc.connectors, or oidc.groups with oidc.external: the gate
    exchanges them), or both."""
    return config.workload_identity.enabled or config.oidc.login_exchange


def _exchange_secret(read: BundleReader, name: str, ca: bytes, login_issuer_ca: bool) -> Secret:
    """login_issuer_ca: an external IdP's private CA, for fetching its keys (people's logins)."""
    cert, key = read.leaf("exchange", "server")
    return _bundle_secret(name, "token exchange (its TLS pair and its own signing key)", {
        "exchange/server.pem": cert, "exchange/server.key": key,
        "exchange/signing.key": read.file(read.layout.exchange_signing_key), "trust/ca.pem": ca,
        **(_issuer_ca(read) if login_issuer_ca else {}),
    })


def _server_pod_secrets(config: BundleConfig, read: BundleReader, n: dict[str, str]) -> list[Secret]:
    """What the chart mounts into the Temporal server pods, and PostgreSQL's own certificate."""
    server_bundle, server_current, server_next = read.trust("server")
    _, client_current, client_next = read.trust("client")
    _, internode_current, internode_next = read.trust("internode")
    frontend_cert, frontend_key = read.leaf("server", "frontend")
    internode_cert, internode_key = read.leaf("server", "internode")
    tls = "kubernetes.io/tls"
    return [
        # tls.crt/tls.key, and one CA per file for the lists in server.config.tls (Temporal's hot
        # reload watches the first certificate of each file); server-ca.crt is SSL_CERT_FILE.
        Secret(n["frontend_tls"], "Temporal server pods (server.config.tls.frontend)", tls, (
            ("tls.crt", frontend_cert), ("tls.key", frontend_key),
            ("client-current.crt", client_current), ("client-next.crt", client_next),
            ("server-ca.crt", server_bundle), ("server-current.crt", server_current), ("server-next.crt", server_next),
        )),
        Secret(n["internode_tls"], "Temporal server pods (server.config.tls.internode and systemWorker)", tls, (
            ("tls.crt", internode_cert), ("tls.key", internode_key),
            ("internode-current.crt", internode_current), ("internode-next.crt", internode_next),
        )),
        _tls_secret(n["database"], "Temporal server pods (PostgreSQL client)",
                    read.leaf("dbclient", config.persistence.user), server_bundle),
        _tls_secret(n["postgres"], "PostgreSQL server (verifies clients with the database CA)",
                    read.leaf("postgres", "server"), read.trust("database")[0]),
    ]


def _workload_secrets(config: BundleConfig, read: BundleReader, n: dict[str, str], server_ca: bytes) -> list[Secret]:
    layout = read.layout
    registrar, jwks, codec = read.leaf("registrar", "system"), read.leaf("jwks", "server"), read.leaf("codec", "server")
    gate_server, gate_client = read.leaf("ui-gate", "server"), read.leaf("ui-gate", "client")
    return [
        _tls_secret(n["web"], "Web UI (web.additionalVolumes)", read.leaf("ui", "client"), server_ca),
        _admintools_secret(read, n["admintools"], server_ca),
        _bundle_secret(n["registrar"], "namespace registration Job", {
            "registrar/system.pem": registrar[0], "registrar/system.key": registrar[1],
            "registrar/system.jwt": read.file(layout.registrar_token), "trust/ca.pem": server_ca,
        }),
        _bundle_secret(n["jwks"], "JWKS server", {
            "jwks/server.pem": jwks[0], "jwks/server.key": jwks[1], "jwks/jwks.json": read.file(layout.jwks),
        }),
        _bundle_secret(n["ui_gate"], "UI gate (its server and frontend-client pairs, no token)", {
            "ui-gate/server.pem": gate_server[0], "ui-gate/server.key": gate_server[1],
            "ui-gate/client.pem": gate_client[0], "ui-gate/client.key": gate_client[1],
            # Callers (the Web UI) prove a client-domain certificate; the frontend a server one.
            "trust/client/ca.pem": read.trust("client")[0], "trust/ca.pem": server_ca,
            **(_issuer_ca(read) if issuer_ca_exported(config) else {}),
        }),
        _bundle_secret(n["codec"], "codec server", {
            "codec/server.pem": codec[0], "codec/server.key": codec[1],
            "codec-keys/keys.json": read.file(layout.codec_keys), "trust/ca.pem": server_ca,
            # The key service asks for a client-domain certificate (workers); browsers send none.
            "trust/client/ca.pem": read.trust("client")[0],
            **_codec_kek(layout), **(_issuer_ca(read) if issuer_ca_exported(config) else {}),
        }),
    ]


def _issuer_ca(read: BundleReader) -> dict[str, bytes]:
    """An external issuer's private CA: the codec server fetches the issuer's keys with it."""
    return {"trust/oidc-issuer/ca.pem": read.file(issuer_ca_path(read.layout))}


def _codec_kek(layout) -> dict[str, bytes]:
    """The file backend's KEK(s) ride with the codec server (the only pod that unwraps data keys),
    and under per-namespace custody each namespace's ring; under pkcs11 the KEKs stay in the token
    and the pod reaches the token instead."""
    return {layout.relative(p): read_optional(p) or b"" for p in custody_files(layout)[1:]}


def _tls_secret(name: str, consumer: str, pair: tuple[bytes, bytes], ca: bytes) -> Secret:
    return Secret(name, consumer, "kubernetes.io/tls", (("tls.crt", pair[0]), ("tls.key", pair[1]), ("ca.crt", ca)))


def _admintools_secret(read: BundleReader, name: str, ca: bytes) -> Secret:
    # A client-domain certificate and the system token: the frontend checks both. Never the
    # internode key, which would make admin-tools a system admin without a token.
    cert, key = read.leaf("clients", "system")
    data = (("tls.crt", cert), ("tls.key", key), ("ca.crt", ca), ("token", read.file(read.layout.token("system")).strip()))
    return Secret(name, "admin-tools (admintools.additionalVolumes)", "Opaque", data)


def _role_secret(read: BundleReader, name: str, role: str, ca: bytes, with_token: bool = True) -> Secret:
    cert, key = read.leaf("clients", role)
    data = (("ca.pem", ca), (f"{role}.pem", cert), (f"{role}.key", key))
    if with_token:
        data += ((f"{role}.jwt", read.file(read.layout.token(role))),)
    return Secret(name, f"applications of role {role}", "Opaque", data)


def _refresher_secret(read: BundleReader, layout: Layout, name: str) -> Secret:
    files = {"private/jwt/active": read.file(layout.active_kid), "jwks/jwks.json": read.file(layout.jwks)}
    for path in sorted(layout.signing_keys.glob("*.key")):
        files[f"private/jwt/{path.name}"] = read.file(path)
    return _bundle_secret(name, "token refresher (the only holder of the JWT signing key)", files)


def _bundle_secret(name: str, consumer: str, files: dict[str, bytes]) -> Secret:
    """Mounted back with `items` at the bundle-relative paths, so our own commands find their
    files where they always do (under BUNDLE_DIR)."""
    keys = {path: path.replace("/", "-") for path in files}
    return Secret(name, consumer, "Opaque", tuple((keys[p], d) for p, d in files.items()),
                  tuple(sorted((keys[p], p) for p in files)))


def bundle_items(secret: Secret) -> list[dict]:
    return [{"key": key, "path": path} for key, path in secret.paths]
