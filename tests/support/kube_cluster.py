"""A real Kubernetes control plane for the kube tier: etcd and kube-apiserver built from the Go
module proxy (scripts/build-kubernetes.sh), started and stopped by the tests. The API server listens
on every address of this machine: pods reach it through the `kubernetes` Service, whose endpoint is
this machine's address on its default route (kube-proxy routes the Service there).

What it is: the released kube-apiserver with RBAC (`--authorization-mode=Node,RBAC`), its real
admission chain, its service-account issuer (TokenRequest, TokenReview, OIDC discovery) and a
client-certificate admin. Pods run only once a node joins it (tests/support/kube_node.py: kubelet,
containerd, scheduler and controller manager); without one, pods are objects that are admitted and
bound to tokens but never run.

Everything lives under one work directory: the cluster CA, the API server's serving pair, the
service-account signing key, etcd's data and an admin kubeconfig for the kubectl of the same build.
etcd listens on a loopback port without TLS: only the API server talks to it, on this machine.
"""

from __future__ import annotations

import json
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from bootstrap.core.pki import CA, generate_key, private_key_pem
from cryptography.hazmat.primitives import serialization

from tests.support.exports import WORKLOAD_IDENTITY
from tests.support.binaries import built_by
from tests.support.ports import free_port
from tests.support.processes import terminate
from tests.support.waits import HarnessError, wait_until

# The issuer a real cluster's tokens carry; discovery and the JWKS are served by this API server.
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
# The audience the bundle's token exchange accepts from this cluster's service-account tokens: the
# export's own (tests/support/exports.WORKLOAD_IDENTITY), which its example worker pod projects.
EXCHANGE_AUDIENCE = yaml.safe_load(WORKLOAD_IDENTITY)["workload_identity"]["issuers"][0]["audience"]


def node_ip() -> str:
    """This machine's address on its default route (kubelet and the API server's advertised address
    refuse a loopback one). Nothing is sent: connecting a UDP socket only picks the route."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("198.51.100.1", 9))
        except OSError as exc:
            raise HarnessError(f"no IPv4 route for a node address: {exc}") from exc
        address = s.getsockname()[0]
    if address.startswith("127."):
        raise HarnessError("only a loopback address: kubelet needs another node IP")
    return address


def kubernetes_bin_dir() -> Path:
    """The cached build; builds it (minutes, once) when missing. A failed build is an error."""
    path = built_by("build-kubernetes.sh", "Kubernetes")
    for name in ("etcd", "kube-apiserver", "kubectl", "kubelet", "kube-proxy", "kube-scheduler",
                 "kube-controller-manager"):
        if not (path / name).is_file():
            raise HarnessError(f"{path / name} missing after build")
    return path


@dataclass
class ApiServerIssuer:
    """What the exchange is told of the cluster: the issuer its tokens carry, where discovery is
    reached from here, the cluster CA, and the exchange's own service-account token (the API
    server answers discovery only to an authenticated caller)."""

    issuer: str
    discovery_url: str
    ca_file: Path
    token_file: Path
    audience: str = EXCHANGE_AUDIENCE


@dataclass
class KubeCluster:
    workdir: Path
    bin_dir: Path = field(default_factory=kubernetes_bin_dir)
    processes: list = field(default_factory=list)

    def __post_init__(self):
        self.api_port, self.etcd_port, self.etcd_peer_port = free_port(), free_port(), free_port()

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def ca_file(self) -> Path:
        return self.workdir / "ca.pem"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    def start(self) -> "KubeCluster":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_pki()
        self._start_etcd()
        self._start_apiserver()
        return self

    def stop(self) -> None:
        for process, log in reversed(self.processes):
            terminate(process)
            log.close()
        self.processes.clear()

    def kubectl(self, *args: str, check: bool = True, input: str | None = None,
                as_token: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        """kubectl of the same build; as the admin (client certificate), or with a bearer token
        and nothing else (`as_token`), as a pod of that service account would call."""
        if as_token is None:
            auth = ["--kubeconfig", str(self.kubeconfig)]
        else:
            auth = ["--kubeconfig", "/dev/null", "--server", self.server,
                    "--certificate-authority", str(self.ca_file), "--token", as_token]
        result = subprocess.run([str(self.bin_dir / "kubectl"), *auth, *args], input=input,
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise HarnessError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def get(self, *args: str) -> dict:
        """`kubectl get ARGS -o json`, as the admin: the object (or the list) as the API server holds it."""
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def create_token(self, namespace: str, account: str, audience: str, *, pod: str | None = None,
                     duration: str = "10m") -> str:
        """A TokenRequest token, as the kubelet projects one; bound to a pod object when named."""
        args = ["create", "token", account, "-n", namespace, f"--audience={audience}", f"--duration={duration}"]
        if pod:
            uid = self.kubectl("get", "pod", pod, "-n", namespace, "-o", "jsonpath={.metadata.uid}").stdout
            args += ["--bound-object-kind=Pod", f"--bound-object-name={pod}", f"--bound-object-uid={uid}"]
        return self.kubectl(*args).stdout.strip()

    def apply(self, manifest: dict | str) -> subprocess.CompletedProcess:
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        return self.kubectl("apply", "-f", "-", input=text)

    def _write_pki(self) -> None:
        ca = CA.create("kube tier cluster CA")
        serving = ca.issue_cert("127.0.0.1", "localhost", "kubernetes", "kubernetes.default",
                                "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "10.96.0.1",
                                common_name="kube-apiserver", usage="server")
        # The admin: a client certificate in system:masters, which RBAC lets do anything.
        admin = ca.issue_cert(common_name="kube-admin", organization="system:masters", usage="client")
        # What the API server shows a kubelet (logs, exec); the kubelet asks the API server whether
        # this user may (its webhook authorizer), and system:masters may.
        kubelet_client = ca.issue_cert(common_name="kube-apiserver-kubelet-client", organization="system:masters",
                                       usage="client")
        self.ca = ca  # a node (tests/support/kube_node.py) has its certificates signed here
        signing = generate_key("rsa-2048")
        files = {
            "ca.pem": ca.cert_pem(), "apiserver.pem": serving.cert_pem(), "apiserver.key": serving.key_pem(),
            "admin.pem": admin.cert_pem(), "admin.key": admin.key_pem(),
            "kubelet-client.pem": kubelet_client.cert_pem(), "kubelet-client.key": kubelet_client.key_pem(),
            "sa.key": private_key_pem(signing),
            "sa.pub": signing.public_key().public_bytes(serialization.Encoding.PEM,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo),
        }
        for name, data in files.items():
            path = self.workdir / name
            path.write_bytes(data)
            path.chmod(0o600)
        self.kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "admin",
            "clusters": [{"name": "kube-tier", "cluster": {"server": self.server,
                                                            "certificate-authority": str(self.ca_file)}}],
            "users": [{"name": "admin", "user": {"client-certificate": str(self.workdir / "admin.pem"),
                                                 "client-key": str(self.workdir / "admin.key")}}],
            "contexts": [{"name": "admin", "context": {"cluster": "kube-tier", "user": "admin"}}],
        }))

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.workdir / f"{name}.log", "wb")
        self.processes.append((subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT), log))

    def _start_etcd(self) -> None:
        client = f"http://127.0.0.1:{self.etcd_port}"
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        self._spawn("etcd", [str(self.bin_dir / "etcd"), "--name", "kube-tier", "--data-dir",
                             str(self.workdir / "etcd"), "--listen-client-urls", client, "--advertise-client-urls",
                             client, "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                             "--initial-cluster", f"kube-tier={peer}", "--log-level", "warn"])

    def _start_apiserver(self) -> None:
        w = self.workdir
        self._spawn("kube-apiserver", [
            str(self.bin_dir / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            # Every address: pods reach it at the advertised one, the `kubernetes` Service's endpoint.
            "--bind-address=0.0.0.0", f"--secure-port={self.api_port}", f"--advertise-address={node_ip()}",
            f"--tls-cert-file={w / 'apiserver.pem'}", f"--tls-private-key-file={w / 'apiserver.key'}",
            f"--client-ca-file={self.ca_file}",
            "--authorization-mode=Node,RBAC",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={w / 'sa.pub'}",
            f"--service-account-signing-key-file={w / 'sa.key'}",
            # Else discovery would name the advertised address, which nothing here can reach.
            f"--service-account-jwks-uri={self.server}/openid/v1/jwks",
            f"--api-audiences={SERVICE_ACCOUNT_ISSUER}",
            # To a kubelet (logs): over its address, its serving certificate checked against this CA.
            f"--kubelet-client-certificate={w / 'kubelet-client.pem'}",
            f"--kubelet-client-key={w / 'kubelet-client.key'}",
            f"--kubelet-certificate-authority={self.ca_file}",
            "--kubelet-preferred-address-types=InternalIP",
        ])
        wait_until(self._ready, timeout=90, what=f"kube-apiserver /readyz (logs in {w})")

    def _ready(self) -> bool:
        for process, _ in self.processes:
            if process.poll() is not None:
                raise HarnessError(f"{process.args[0]} exited with {process.returncode}; see {self.workdir}")
        result = self.kubectl("get", "--raw", "/readyz", check=False)
        return result.returncode == 0 and result.stdout.strip() == "ok"
