"""The server's TLS fails closed: a server config whose TLS would leave a listener plaintext, or
open to any client, is refused before it is written anywhere.

Temporal (v1.31.2) builds a listener's TLS only when the group's `server` section has a
certificate: a `server` section with client CAs but no certFile/keyFile is TLS off, a plaintext
listener (on the internal-frontend, system admin for every caller). Helm chart values that look
right can compose exactly that (see bootstrap/ops/export_helm/export.py), so the rendered config itself is
checked, not the values that made it.
"""

from __future__ import annotations

from ..errors import BundleError

# Groups whose listeners must demand a client certificate; their clients must pin our CAs.
MUTUAL_GROUPS = ("internode", "frontend")


def tls_problems(server_config: object) -> list[str]:
    """Every way the config's global.tls would serve plaintext or admit any client; [] if none."""
    tls = _mapping(_mapping(server_config).get("global")).get("tls")
    if not isinstance(tls, dict):
        return ["global.tls is missing: every listener would be plaintext"]
    problems = []
    for group in MUTUAL_GROUPS:
        if not isinstance(_mapping(tls.get(group)).get("server"), dict):
            problems.append(f"global.tls.{group}.server is missing: its listeners would be plaintext")
        if not _files(_mapping(_mapping(tls.get(group)).get("client")).get("rootCaFiles")):
            problems.append(f"global.tls.{group}.client.rootCaFiles is empty: its clients would trust any CA")
    for group, section in tls.items():
        server = _mapping(section).get("server")
        if isinstance(server, dict):
            problems += _server_problems(group, server)
    if "systemWorker" in tls:
        problems += _system_worker_problems(_mapping(tls["systemWorker"]))
    return problems


def require_closed_tls(server_config: object, what: str) -> None:
    """Raise one BundleError line naming the first problem (and how many more)."""
    problems = tls_problems(server_config)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise BundleError(f"{what}: refused, the server's TLS would fail open: {problems[0]}{more}")


def _server_problems(group: str, server: dict) -> list[str]:
    where = f"global.tls.{group}.server"
    problems = [f"{where}.{key} is empty: that listener would be plaintext"
                for key in ("certFile", "keyFile") if not _non_empty_string(server.get(key))]
    if group in MUTUAL_GROUPS:
        if server.get("requireClientAuth") is not True:
            problems.append(f"{where}.requireClientAuth is not true: any client could connect")
        if not _files(server.get("clientCaFiles")):
            problems.append(f"{where}.clientCaFiles is empty: client certificates would be checked against no CA of ours")
    return problems


def _system_worker_problems(worker: dict) -> list[str]:
    where = "global.tls.systemWorker"
    problems = [f"{where}.{key} is empty: the system worker would call without a certificate"
                for key in ("certFile", "keyFile") if not _non_empty_string(worker.get(key))]
    if not _files(_mapping(worker.get("client")).get("rootCaFiles")):
        problems.append(f"{where}.client.rootCaFiles is empty: the system worker would trust any CA")
    return problems


def _mapping(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def _non_empty_string(value: object) -> bool:
    return isinstance(value, str) and value.strip() != ""


def _files(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(_non_empty_string(v) for v in value)
