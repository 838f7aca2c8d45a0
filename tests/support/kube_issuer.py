"""A STAND-IN for kube-apiserver's service-account issuer, for tests: NOT a real kube-apiserver.

It serves what the token exchange reads from a cluster, at the same paths and in the same shape:
GET /.well-known/openid-configuration (issuer, jwks_uri, RS256) and GET /openid/v1/jwks (RSA keys
with kid, use sig, alg RS256), both over HTTPS and, like kube-apiserver's defaults, only for a
caller presenting a bearer token. It mints tokens shaped like the kubelet's projected
service-account tokens (TokenRequest): aud list, iss, sub system:serviceaccount:<ns>:<sa>, iat, nbf,
exp, jti, and kubernetes.io {namespace, serviceaccount {name, uid}, pod {name, uid}, node}.

Why a stand-in: k8s.io/kubernetes is on the Go module proxy (v1.37.2 checked 2026-12-01) but its
go.mod replaces 33 staging modules with local paths, so `go install .../cmd/kube-apiserver@v1.37.2`
cannot build it from the proxy; a source build plus etcd does not fit CI's budget.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import jwt
from aiohttp import web

from bootstrap.core.pki import CA, utcnow
from bootstrap.servers.http import Limits
from bootstrap.servers.service import Service
from bootstrap.servers.tls import ReloadingTLS
from bootstrap.core.config.workload import TOKEN_REVIEW_PATH
from bootstrap.core.tokens import SigningKey

DISCOVERY_PATH = "/.well-known/openid-configuration"
JWKS_PATH = "/openid/v1/jwks"
AUDIENCE = "temporal-service"
JWKS_TYPE = "application/jwk-set+json"


def _accepts(accept: str, content_type: str) -> bool:
    ranges = {part.split(";")[0].strip() for part in accept.split(",")}
    return bool(ranges & {content_type, "application/*", "*/*"})


@dataclass
class KubeIssuer:
    workdir: Path
    port: int
    keys: list = field(default_factory=lambda: [SigningKey.generate("RS256")])
    discovery_token: str = "exchange-pod-token"  # what kube-apiserver would ask the exchange pod for
    host: str = "localhost"  # the name in the issuer URL and the TLS certificate

    @property
    def issuer(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def ca_file(self) -> Path:
        return self.workdir / "issuer-ca.pem"

    @property
    def token_file(self) -> Path:
        """The exchange's own credential for discovery (its pod's token, in a cluster)."""
        return self.workdir / "discovery.token"

    def write_files(self) -> "KubeIssuer":
        """The cluster CA, the API server's TLS pair, the signing key and the discovery token."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        ca = CA.create("stand-in cluster CA")
        leaf = ca.issue_cert(self.host, "localhost", "127.0.0.1", common_name="kube-apiserver", usage="server")
        self.ca_file.write_bytes(ca.cert_pem())
        (self.workdir / "apiserver.pem").write_bytes(leaf.cert_pem())
        (self.workdir / "apiserver.key").write_bytes(leaf.key_pem())
        (self.workdir / "sa-signing.key").write_bytes(self.keys[0].private_pem())
        self.token_file.write_text(self.discovery_token + "\n")
        return self

    def start(self, bind: str = "127.0.0.1", write: bool = True) -> "KubeIssuer":
        if write:
            self.write_files()
        self.requests: list[str] = []
        self.deleted_pods: set[str] = set()  # TokenReview answers authenticated: false for their tokens
        self.review_unavailable = False
        app = web.Application()
        app.router.add_get(DISCOVERY_PATH, self._discovery)
        app.router.add_get(JWKS_PATH, self._jwks)
        app.router.add_post(TOKEN_REVIEW_PATH, self._token_review)
        tls = ReloadingTLS(self.workdir / "apiserver.pem", self.workdir / "apiserver.key")
        self.service = Service(app, bind, self.port, tls, Limits(max_connections=64))
        self.thread = threading.Thread(target=self.service.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.service.shutdown()
        self.service.server_close()

    def _authorized(self, request: web.Request) -> bool:
        self.requests.append(request.path)
        return request.headers.get("Authorization") == f"Bearer {self.discovery_token}"

    async def _discovery(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"kind": "Status", "code": 401}, status=401)
        return web.json_response({
            "issuer": self.issuer, "jwks_uri": f"{self.issuer}{JWKS_PATH}", "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"], "id_token_signing_alg_values_supported": ["RS256"]})

    async def _jwks(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"kind": "Status", "code": 401}, status=401)
        if not _accepts(request.headers.get("Accept", "*/*"), JWKS_TYPE):
            # kube-apiserver v1.37.2 (go-restful, Produces(application/jwk-set+json)) answers 406.
            return web.json_response({"kind": "Status", "code": 406}, status=406)
        keys = [{k: v for k, v in key.public_jwk().items()} for key in self.keys]
        return web.Response(body=json.dumps({"keys": keys}), content_type=JWKS_TYPE)

    async def _token_review(self, request: web.Request) -> web.Response:
        """kube-apiserver's TokenReview as far as the exchange uses it: the token's signature, expiry
        and audience, and whether its pod still exists."""
        if not self._authorized(request) or self.review_unavailable:
            return web.json_response({"kind": "Status", "code": 503}, status=503)
        spec = (await request.json())["spec"]
        status: dict = {"authenticated": False}
        try:
            claims = jwt.decode(spec["token"], self.keys[0].private_key.public_key(), algorithms=["RS256"],
                                audience=spec["audiences"][0], issuer=self.issuer)
            if claims["kubernetes.io"].get("pod", {}).get("name") not in self.deleted_pods:
                status = {"authenticated": True, "user": {"username": claims["sub"]}, "audiences": spec["audiences"]}
        except jwt.PyJWTError:
            pass
        return web.json_response({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "status": status},
                                 status=201)

    def service_account_token(self, namespace: str = "default", account: str = "worker", *, lifetime: int = 600,
                              audience: str = AUDIENCE, key: SigningKey | None = None, issuer: str | None = None,
                              bound_pod: bool = True) -> str:
        key = key or self.keys[0]
        now = int(utcnow().timestamp())
        kube = {"namespace": namespace, "serviceaccount": {"name": account, "uid": str(uuid.uuid4())},
                "node": {"name": "node-1", "uid": str(uuid.uuid4())}}
        if bound_pod:
            kube["pod"] = {"name": f"{account}-5c7d8b9f4-x2x7k", "uid": str(uuid.uuid4())}
        claims = {"aud": [audience], "exp": now + lifetime, "iat": now, "iss": issuer or self.issuer,
                  "jti": str(uuid.uuid4()), "kubernetes.io": kube, "nbf": now,
                  "sub": f"system:serviceaccount:{namespace}:{account}"}
        return jwt.encode(claims, key.private_key, algorithm="RS256", headers={"alg": "RS256", "kid": key.kid})

    def project(self, path: Path, token: str) -> None:
        """Write the token as the kubelet does: atomically replace the file the pod reads."""
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(token)
        tmp.replace(path)


def main(argv: list[str]) -> None:
    """python -m tests.support.kube_issuer DIR PORT HOST: serve the files write_files() put in DIR (the
    docker tier runs it as a container in the role of the cluster's API server)."""
    directory, port, host = Path(argv[0]), int(argv[1]), argv[2]
    key = SigningKey.from_pem((directory / "sa-signing.key").read_bytes())
    issuer = KubeIssuer(directory, port, [key], (directory / "discovery.token").read_text().strip(), host)
    issuer.start(bind="0.0.0.0", write=False)
    print(f"stand-in issuer {issuer.issuer} serving", flush=True)
    issuer.thread.join()


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
