"""What `make export ROLE=<role>` hands an application: its client certificate, key and token, the
CA, and for the namespaces the role may write to, where to fetch their data keys (key-service.json)
instead of any key material. Nothing in it opens a namespace's payloads by itself: a worker gets
only the rings its own token is allowed, from the codec server's key service (servers/key_service.py)."""

from __future__ import annotations

import json

from ..core.permissions import grants
from ..errors import BundleError
from ..store import CERT_MODE, KEY_MODE, Action, Layout, Write, read_optional

KEY_SERVICE_FILE = "key-service.json"
KEY_SERVICE_PATH = "/v1/keys"
ENCRYPT_ROLE = "write"


def encrypting_namespaces(config, role) -> list[str]:
    """The configured namespaces whose payloads the role writes (so encrypts): write on the
    namespace itself; a temporal-system grant does not make a worker a custodian."""
    claims = {"permissions": [p for p in role.permissions if not p.startswith("temporal-system:")]}
    return [ns.name for ns in config.namespaces if grants(claims, ns.name, ENCRYPT_ROLE, "permissions")]


def key_service_doc(config, namespaces: list[str]) -> dict:
    url = f"https://{config.codec.host}:{config.codec.port}{KEY_SERVICE_PATH}"
    return {"url": url, "namespaces": namespaces, "ca": "ca.pem",
            "note": "data keys are fetched with this role's certificate and token; no key-encryption key is exported"}


def plan_export(config, layout: Layout, role_name: str, dest: Layout) -> list[Action]:
    role = next((r for r in config.roles if r.name == role_name), None)
    if role is None:
        raise BundleError(f"no role {role_name!r} in the config (roles: {', '.join(r.name for r in config.roles)})")
    cert, key = layout.leaf("clients", role.name)
    sources = [(layout.trust_files("server")[0], "ca.pem", CERT_MODE), (cert, f"{role.name}.pem", CERT_MODE),
               (key, f"{role.name}.key", KEY_MODE), (layout.token(role.name), f"{role.name}.jwt", KEY_MODE)]
    actions: list[Action] = []
    for path, name, mode in sources:
        data = read_optional(path)
        if data is None:
            raise BundleError(f"{path} not found: run init first")
        actions.append(Write(dest.root / name, data, mode, "exported"))
    namespaces = encrypting_namespaces(config, role)
    if namespaces:
        doc = json.dumps(key_service_doc(config, namespaces), indent=2, sort_keys=True) + "\n"
        actions.append(Write(dest.root / KEY_SERVICE_FILE, doc.encode(), CERT_MODE,
                             f"the key service for {', '.join(namespaces)} (no key material)"))
    return actions
