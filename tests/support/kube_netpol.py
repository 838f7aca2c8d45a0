"""NetworkPolicy enforcement on the kube tier's node (tests/support/kube_node.py).

The enforcer is kube-network-policies v0.8.0 (sigs.k8s.io/kube-network-policies, Kubernetes SIG
Network's implementation; scripts/build-kube-network-policies.sh), run the way its release's
install.yaml runs it: a host-network DaemonSet pod in kube-system with NET_ADMIN, whose service
account may list and watch pods, namespaces and NetworkPolicies, nothing else (the real API
server's RBAC).

It decides each new connection in user space: netfilter hands it the connection's first packet on an
nfqueue, and it answers accept or drop from the policies that select the source pod (egress) and the
destination pod (ingress). It installs that hand-off itself as an nftables `queue` rule, which needs
the kernel's nft_queue; this CI kernel (6.18, CONFIG_NFT_QUEUE unset) lacks it, so its own rule
sync fails (logged) and the node installs the hand-off instead, as an iptables NFQUEUE rule
(xt_NFQUEUE through nft_compat, which such kernels have). It queues what upstream's rule queues:
new connections to or from a pod, after destination NAT and before source NAT (a Service's
masquerade), never the host's own root traffic (kubelet probes, and the tests, which run as root),
and without `--queue-bypass`: with the enforcer down, a new pod connection is dropped, not let
through. Upstream queues only the pods some policy selects; here every pod's new connections are
queued and the enforcer accepts those no policy selects, so the decisions are the same.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.binaries import built_by
from tests.support.waits import HarnessError

NAMESPACE = "kube-system"
NAME = "kube-network-policies"
IMAGE = "kube-tier/kube-network-policies:v0.8.0"
QUEUE = 100
CHAIN = "KUBE-TIER-NETPOL"  # mangle table; jumped to from POSTROUTING


def build_image() -> str:
    """A scratch image of the static binary, for the node's containerd (no registry serves one)."""
    binary = built_by("build-kube-network-policies.sh", "kube-network-policies")
    context = binary.parent
    dockerfile = "FROM scratch\nCOPY kube-network-policies /netpol\nENTRYPOINT [\"/netpol\"]\n"
    build = subprocess.run(["docker", "build", "-q", "-t", IMAGE, "-f", "-", str(context)], input=dockerfile.encode(),
                           capture_output=True, timeout=300)
    if build.returncode != 0:
        raise HarnessError(f"docker build of {IMAGE} failed: {build.stderr.decode(errors='replace')}")
    return IMAGE


def manifests(node_name: str, metrics_port: int, toleration: dict) -> list[dict]:
    labels = {"app": NAME}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": NAME, "namespace": NAMESPACE}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": NAME},
         "rules": [{"apiGroups": [""], "resources": ["pods", "namespaces"], "verbs": ["list", "watch"]},
                   {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": NAME},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NAME},
         "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}]},
        {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": NAME, "namespace": NAMESPACE},
         "spec": {"selector": {"matchLabels": labels}, "template": {
             "metadata": {"labels": labels},
             "spec": {"hostNetwork": True, "serviceAccountName": NAME, "tolerations": [toleration],
                      "nodeSelector": {"kubernetes.io/hostname": node_name},
                      "containers": [{
                          "name": NAME, "image": IMAGE, "imagePullPolicy": "Never",
                          "args": [f"--hostname-override={node_name}", f"--nfqueue-id={QUEUE}",
                                   f"--metrics-bind-address=127.0.0.1:{metrics_port}",
                                   # containerd 1.6 has no NRI; the pod IPs come from the API server.
                                   "--disable-nri",
                                   # Not needed on kernels from 6.12 on (its own help says so).
                                   "--netfilter-bug-1766-fix=false",
                                   "--v=2"],  # one log line per decision: the pod log says what was dropped
                          # NET_ADMIN opens the nfqueue; install.yaml also asks `privileged`,
                          # which this API server does not allow and the queue does not need.
                          "securityContext": {"capabilities": {"add": ["NET_ADMIN"]}}}]}}}},
    ]


def queue_bound() -> bool:
    """Whether a process listens on the queue (the enforcer opens it once its caches are synced)."""
    try:
        lines = Path("/proc/net/netfilter/nfnetlink_queue").read_text().splitlines()
    except OSError:
        return False
    return any(line.split()[0] == str(QUEUE) for line in lines if line.strip())


def divert(pod_subnet: str) -> None:
    """New connections to or from a pod handed to the enforcer (see the module docstring); kept as
    it is when in place, so restarting the enforcer never opens a gap."""
    if _iptables("-C", "POSTROUTING", "-j", CHAIN, check=False):
        return
    rules = [["-m", "conntrack", "!", "--ctstate", "NEW", "-j", "RETURN"],
             ["-m", "owner", "--uid-owner", "0", "-j", "RETURN"],
             ["-s", pod_subnet, "-j", "NFQUEUE", "--queue-num", str(QUEUE)],
             ["-d", pod_subnet, "-j", "NFQUEUE", "--queue-num", str(QUEUE)]]
    undivert()  # a chain an interrupted run left behind
    _iptables("-N", CHAIN)
    for rule in rules:
        _iptables("-A", CHAIN, *rule)
    _iptables("-A", "POSTROUTING", "-j", CHAIN)


def undivert() -> None:
    """The hand-off removed (first the jump, so no packet waits on a queue nobody reads)."""
    for args in (["-D", "POSTROUTING", "-j", CHAIN], ["-F", CHAIN], ["-X", CHAIN]):
        _iptables(*args, check=False)


def _iptables(*args: str, check: bool = True) -> bool:
    result = subprocess.run(["iptables", "-w", "-t", "mangle", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise HarnessError(f"iptables -t mangle {' '.join(args)} failed: {result.stderr.strip()}")
    return result.returncode == 0
