"""Update the Kubernetes objects that export-helm made, from inside the cluster, with one JSON merge
patch each through the API server and the pod's service account: freshly minted tokens into their
Secrets (the token refresher; only the token keys change, certificates and keys stay), and the
cluster info into the UI gate's ConfigMap (the namespace registration Job)."""

from __future__ import annotations

import base64
import json
import os
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..errors import BundleError

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass(frozen=True)
class ApiServer:
    base_url: str
    namespace: str
    token: str
    context: ssl.SSLContext | None

    @classmethod
    def in_cluster(cls, option: str = "--kubernetes-secrets", account: Path | None = None) -> "ApiServer":
        account = account or SERVICE_ACCOUNT
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise BundleError(f"{option} works inside a Kubernetes pod only (KUBERNETES_SERVICE_HOST is unset)")
        try:
            token = (account / "token").read_text().strip()
            namespace = (account / "namespace").read_text().strip()
        except OSError as exc:
            raise BundleError(f"no service account token in {account}: {exc.strerror or exc}") from None
        host = f"[{host}]" if ":" in host else host
        return cls(f"https://{host}:{port}", namespace, token, ssl.create_default_context(cafile=str(account / "ca.crt")))

    def patch_secret(self, name: str, data: dict[str, bytes]) -> None:
        encoded = {k: base64.b64encode(v).decode() for k, v in sorted(data.items())}
        self._merge_patch("secrets", name, "Secret", {"data": encoded})

    def patch_configmap(self, name: str, data: dict[str, str]) -> None:
        self._merge_patch("configmaps", name, "ConfigMap", {"data": dict(sorted(data.items()))})

    def _merge_patch(self, resource: str, name: str, kind: str, patch: dict) -> None:
        request = urllib.request.Request(
            f"{self.base_url}/api/v1/namespaces/{self.namespace}/{resource}/{name}",
            data=json.dumps(patch).encode(), method="PATCH",
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/merge-patch+json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30, context=self.context):
                pass
        except urllib.error.HTTPError as exc:
            raise BundleError(f"updating {kind} {name}: the API server answered {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise BundleError(f"updating {kind} {name}: {getattr(exc, 'reason', exc)}") from None


def token_patches(prefix: str, tokens: dict[str, bytes]) -> dict[str, dict[str, bytes]]:
    """role -> token bytes  =>  Secret name -> {key: value}, in export-helm's naming."""
    patches: dict[str, dict[str, bytes]] = {}
    for role, token in sorted(tokens.items()):
        patches[f"{prefix}-role-{role}"] = {f"{role}.jwt": token}
        if role == "system":
            patches[f"{prefix}-admintools"] = {"token": token.strip()}
    return patches


def publish(api: ApiServer, prefix: str, tokens: dict[str, bytes]) -> list[str]:
    patches = token_patches(prefix, tokens)
    for name, data in patches.items():
        api.patch_secret(name, data)
    return list(patches)
