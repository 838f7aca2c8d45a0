"""A real node for the kube tier's cluster (tests/support/kube_cluster.py): pods that run.

What runs, all on this machine, started and stopped by the tests:
- containerd (Debian's 1.6, its CRI plugin) as an instance of its own: its own root, state, socket
  and config under the work directory, so the Docker engine's containerd is never touched; runc
  is Debian's, the network the CNI `bridge` + `host-local` plugins of Debian's
  containernetworking-plugins (/usr/lib/cni), with its `firewall` plugin admitting the pods'
  traffic past the FORWARD policy Docker sets to DROP (its chains removed when the node stops). kubelet v1.37.2 still runs on a CRI without the
  RuntimeConfig call (1.6 has none): it then takes the cgroup driver from its own config, which is
  cgroupfs here as in containerd's runc options. On a cgroup v1 host kubelet v1.37 refuses to start
  unless `failCgroupV1: false` (set below).
- kubelet (same build as the API server) with a client certificate for `system:node:<name>` in
  `system:nodes` signed by the cluster CA, so the Node authorizer is what lets it read its pods'
  secrets and request their projected service-account tokens; a serving certificate from the same
  CA, which the API server checks when it fetches logs.
- kube-scheduler and kube-controller-manager (with the service-account signing key and the
  cluster CA: the service-account controller creates each namespace's `default` account, the
  root-CA publisher the `kube-root-ca.crt` ConfigMap every pod's API-access volume needs).
- kube-proxy (iptables mode, every Service's traffic masqueraded so a pod reaching a Service
  backed by a pod on the same bridge gets its answers back) and CoreDNS (scripts/build-coredns.sh)
  with its `kubernetes` plugin, on this machine's address, port 53: the kubelet's clusterDNS, so
  pods resolve `<service>.<namespace>.svc` and reach the API server at `kubernetes.default.svc`.
  Stopping the node runs `kube-proxy --cleanup`, which removes its iptables chains again.

There is no registry: images are the local Docker engine's, `docker save`d and imported into this
containerd (`ctr -n k8s.io images import`), and pods must say `imagePullPolicy: Never`. The node is
registered with a taint (TAINT) that only the tests' own pods tolerate (TOLERATION). The sandbox
("pause") image is made from the bundle image with `sleep infinity` as its entrypoint.
NetworkPolicies are enforced by kube-network-policies (tests/support/kube_netpol.py), which the
node runs as a DaemonSet once kube-proxy is up; the bridge plugin itself implements none.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import kube_netpol
from tests.support.kube_cluster import KubeCluster, node_ip
from tests.support.ports import free_port
from tests.support.binaries import built_by
from tests.support.processes import terminate
from tests.support.waits import HarnessError, wait_until

NODE_NAME = "kube-tier-node"
PAUSE_IMAGE = "kube-tier/pause:bundle"
CNI_BIN_DIR = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
BRIDGE = "kubetier0"
POD_SUBNET = "10.244.0.0/24"
TAINT = {"key": "kube-tier/test-pods", "value": "only", "effect": "NoSchedule"}
TOLERATION = {"key": TAINT["key"], "operator": "Equal", "value": TAINT["value"], "effect": TAINT["effect"]}
CLUSTER_DOMAIN = "cluster.local"


@dataclass
class KubeNode:
    cluster: KubeCluster
    workdir: Path
    images: tuple[str, ...] = ()  # local Docker images to import (the pause image is made from the first)
    processes: list = field(default_factory=list)

    def __post_init__(self):
        self.ip = node_ip()
        self.kubelet_port, self.healthz_port = free_port(), free_port()
        self.scheduler_port, self.controller_port = free_port(), free_port()
        self.proxy_healthz_port, self.proxy_metrics_port, self.dns_ready_port = free_port(), free_port(), free_port()
        self.netpol_metrics_port = free_port()

    @property
    def socket(self) -> Path:
        return self.workdir / "containerd" / "containerd.sock"

    def start(self) -> "KubeNode":
        for tool in ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "docker"):
            if not shutil.which(tool):
                raise HarnessError(f"{tool} not found (scripts/install-deps.sh installs it)")
        for plugin in ("bridge", "host-local", "loopback", "firewall"):
            if not (CNI_BIN_DIR / plugin).is_file():
                raise HarnessError(f"CNI plugin {CNI_BIN_DIR / plugin} missing (Debian: containernetworking-plugins)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_pki()
        self._start_containerd()
        self._import_images()
        b = self.cluster.bin_dir
        admin = str(self.cluster.kubeconfig)
        self._spawn("kube-controller-manager", [
            str(b / "kube-controller-manager"), f"--kubeconfig={admin}", "--leader-elect=false",
            "--bind-address=127.0.0.1", f"--secure-port={self.controller_port}",
            f"--service-account-private-key-file={self.cluster.workdir / 'sa.key'}",
            f"--root-ca-file={self.cluster.ca_file}", "--use-service-account-credentials=false"])
        self._spawn("kube-scheduler", [
            str(b / "kube-scheduler"), f"--kubeconfig={admin}", "--leader-elect=false",
            "--bind-address=127.0.0.1", f"--secure-port={self.scheduler_port}"])
        # A Node object left by an earlier node of the same name would show its stale Ready status
        # and lack this node's taint: the kubelet registers afresh.
        self.cluster.kubectl("delete", "node", NODE_NAME, "--ignore-not-found", check=False)
        self._start_dns()
        self._start_kubelet()
        wait_until(self._node_ready, timeout=120, what=f"node {NODE_NAME} Ready (logs in {self.workdir})")
        self._start_proxy()
        self.start_network_policies()
        return self

    def stop(self) -> None:
        """Every pod's sandbox torn down by the kubelet (network namespaces and veths with it),
        then whatever containerd still holds removed, then the processes, mounts and bridge."""
        by_name = {Path(process.args[0]).name: (process, log) for process, log in self.processes}
        kube_netpol.undivert()
        try:
            # No controller recreates a pod and no scheduler places one while the node empties.
            for name in ("kube-controller-manager", "kube-scheduler"):
                if name in by_name:
                    self._terminate(*by_name[name])
            self._drain()
        finally:
            for process, log in reversed(self.processes):
                if Path(process.args[0]).name == "containerd":
                    self._remove_containers()
                self._terminate(process, log)
            self.processes.clear()
            # Its iptables chains outlive it: removed here, so the host's rules are as before.
            subprocess.run([str(self.cluster.bin_dir / "kube-proxy"), "--cleanup"], capture_output=True,
                           check=False, timeout=60)
            _remove_firewall_chains()
            self._kill_shims()
            self.cluster.kubectl("delete", "node", NODE_NAME, "--ignore-not-found", "--wait=false", check=False)
            self._unmount()
            subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True, check=False)

    def ctr(self, *args: str, input: bytes | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        result = subprocess.run(["ctr", "--address", str(self.socket), "--namespace", "k8s.io", *args],
                                input=input, capture_output=True, timeout=timeout)
        if result.returncode != 0:
            raise HarnessError(f"ctr {' '.join(args)} failed: {result.stderr.decode(errors='replace').strip()}")
        return result

    def kubelet_volume_file(self, pod_uid: str, volume: str, name: str) -> Path:
        """A file the kubelet wrote into a projected volume of a pod on this node."""
        return self.workdir / "kubelet" / "pods" / pod_uid / "volumes" / "kubernetes.io~projected" / volume / name

    # -- set-up ----------------------------------------------------------------------------------

    def _write_pki(self) -> None:
        ca = self.cluster.ca
        client = ca.issue_cert(common_name=f"system:node:{NODE_NAME}", organization="system:nodes", usage="client")
        serving = ca.issue_cert(self.ip, NODE_NAME, common_name=NODE_NAME, usage="server")
        w = self.workdir
        for name, data in {"kubelet-client.pem": client.cert_pem(), "kubelet-client.key": client.key_pem(),
                           "kubelet.pem": serving.cert_pem(), "kubelet.key": serving.key_pem()}.items():
            (w / name).write_bytes(data)
            (w / name).chmod(0o600)
        (w / "kubelet.kubeconfig").write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "node",
            "clusters": [{"name": "kube-tier", "cluster": {"server": self.cluster.server,
                                                            "certificate-authority": str(self.cluster.ca_file)}}],
            "users": [{"name": "node", "user": {"client-certificate": str(w / "kubelet-client.pem"),
                                                "client-key": str(w / "kubelet-client.key")}}],
            "contexts": [{"name": "node", "context": {"cluster": "kube-tier", "user": "node"}}],
        }))

    def _start_containerd(self) -> None:
        d = self.workdir / "containerd"
        cni_conf = self.workdir / "cni" / "net.d"
        cni_conf.mkdir(parents=True, exist_ok=True)
        (cni_conf / "10-kube-tier.conflist").write_text(json.dumps({
            "cniVersion": "0.4.0", "name": "kube-tier",
            "plugins": [{"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False,
                         "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_SUBNET}]],
                                  "routes": [{"dst": "0.0.0.0/0"}],
                                  "dataDir": str(self.workdir / "cni" / "ipam")}},
                        # The host's FORWARD policy is Docker's DROP, and the bridge's traffic
                        # passes it (br_netfilter): without this, a pod reaches another pod only
                        # through a Service (kube-proxy accepts what it marked), and Temporal's
                        # services, which dial each other's pod IPs, never form their ring.
                        {"type": "firewall", "backend": "iptables"}],
        }))
        (d / "root").mkdir(parents=True, exist_ok=True)
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        (d / "config.toml").write_text(f"""version = 2
root = "{d / 'root'}"
state = "{d / 'state'}"
[grpc]
  address = "{self.socket}"
[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  # Never below containerd's own OOM score: lowering it needs CAP_SYS_RESOURCE, which a CI
  # sandbox may not grant (the pause container's -998 then fails in runc's nsexec).
  restrict_oom_score_adj = true
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
  [{cri}.cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{cni_conf}"
""")
        self._spawn("containerd", ["containerd", "--config", str(d / "config.toml")])
        wait_until(lambda: self._alive() and self.socket.exists() and
                   subprocess.run(["ctr", "--address", str(self.socket), "version"],
                                  capture_output=True).returncode == 0,
                   timeout=30, what=f"containerd on {self.socket}")

    def _import_images(self) -> None:
        if not self.images:
            raise HarnessError("a node needs at least one local image (the pause image is made from it)")
        build = subprocess.run(["docker", "build", "-q", "-t", PAUSE_IMAGE, "-"], capture_output=True, timeout=300,
                               input=f'FROM {self.images[0]}\nENTRYPOINT ["sleep", "infinity"]\nCMD []\n'.encode())
        if build.returncode != 0:
            raise HarnessError(f"docker build of {PAUSE_IMAGE} failed: {build.stderr.decode(errors='replace')}")
        # One archive: layers the images share are written once.
        archive = self.workdir / "images.tar"
        save = subprocess.run(["docker", "save", "-o", str(archive), PAUSE_IMAGE, kube_netpol.build_image(),
                               *self.images],
                              capture_output=True, timeout=600)
        if save.returncode != 0:
            raise HarnessError(f"docker save failed: {save.stderr.decode(errors='replace')}")
        try:
            self.ctr("images", "import", str(archive), timeout=600)
        finally:
            archive.unlink()

    def _start_kubelet(self) -> None:
        w = self.workdir
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "address": self.ip, "port": self.kubelet_port, "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": self.healthz_port,
            "tlsCertFile": str(w / "kubelet.pem"), "tlsPrivateKeyFile": str(w / "kubelet.key"),
            # Only the cluster CA's client certificates, and what they may do the API server says.
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                               "x509": {"clientCAFile": str(self.cluster.ca_file)}},
            "authorization": {"mode": "Webhook"},
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "cgroupDriver": "cgroupfs", "failCgroupV1": False, "failSwapOn": False,
            # A test machine's disk and memory are shared: no eviction, no image garbage collection
            # (the imported images could not be pulled back).
            "evictionHard": {"memory.available": "0%", "nodefs.available": "0%", "nodefs.inodesFree": "0%",
                             "imagefs.available": "0%"},
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "podLogsDir": str(w / "pod-logs"), "maxPods": 30,
            "clusterDNS": [self.ip], "clusterDomain": CLUSTER_DOMAIN,
            # Only pods that ask for it: the export's Deployments (applied by other kube tests)
            # would otherwise be placed here and pull images no registry serves.
            "registerWithTaints": [TAINT],
        }
        (w / "kubelet.yaml").write_text(json.dumps(config))
        self._spawn("kubelet", [
            str(self.cluster.bin_dir / "kubelet"), f"--config={w / 'kubelet.yaml'}",
            f"--kubeconfig={w / 'kubelet.kubeconfig'}", f"--root-dir={w / 'kubelet'}",
            f"--hostname-override={NODE_NAME}", f"--node-ip={self.ip}", "--v=1"])

    def _start_dns(self) -> None:
        corefile = self.workdir / "Corefile"
        corefile.write_text(f""".:53 {{
    bind {self.ip}
    errors
    ready 127.0.0.1:{self.dns_ready_port}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {self.cluster.kubeconfig} admin
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 5
}}
""")
        self._spawn("coredns", [str(built_by("build-coredns.sh", "CoreDNS")), "-conf", str(corefile)])
        wait_until(lambda: self._alive() and self._http_ok(f"http://127.0.0.1:{self.dns_ready_port}/ready"), 60,
                   f"CoreDNS ready (log in {self.workdir})")

    def _start_proxy(self) -> None:
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(self.cluster.kubeconfig)},
            "hostnameOverride": NODE_NAME, "clusterCIDR": POD_SUBNET, "mode": "iptables",
            "iptables": {"masqueradeAll": True, "localhostNodePorts": False},
            "healthzBindAddress": f"127.0.0.1:{self.proxy_healthz_port}",
            "metricsBindAddress": f"127.0.0.1:{self.proxy_metrics_port}",
            # 0: leave the host's conntrack sysctls as they are (a CI sandbox may not let them change).
            "conntrack": {"maxPerCore": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        }
        (self.workdir / "kube-proxy.yaml").write_text(json.dumps(config))
        self._spawn("kube-proxy", [str(self.cluster.bin_dir / "kube-proxy"), f"--config={self.workdir / 'kube-proxy.yaml'}"])
        wait_until(lambda: self._alive() and self._http_ok(f"http://127.0.0.1:{self.proxy_healthz_port}/healthz"), 60,
                   f"kube-proxy healthy (log in {self.workdir})")

    def start_network_policies(self) -> None:
        """The enforcer's DaemonSet (again, after a test took it away), then, once it listens on its
        queue, the hand-off to it (tests/support/kube_netpol.py): from here on every new pod
        connection is decided by policy."""
        for manifest in kube_netpol.manifests(NODE_NAME, self.netpol_metrics_port, TOLERATION):
            self.cluster.apply(manifest)
        wait_until(lambda: self._alive() and kube_netpol.queue_bound(), 180,
                   f"kube-network-policies listening on nfqueue {kube_netpol.QUEUE} "
                   f"(kubectl -n {kube_netpol.NAMESPACE} logs ds/{kube_netpol.NAME})")
        kube_netpol.divert(POD_SUBNET)

    @staticmethod
    def _http_ok(url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    # -- state -----------------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.workdir / f"{name}.log", "wb")
        self.processes.append((subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT), log))

    def _alive(self) -> bool:
        for process, _ in self.processes:
            if process.poll() is not None:
                raise HarnessError(f"{process.args[0]} exited with {process.returncode}; see {self.workdir}")
        return True

    def _node_ready(self) -> bool:
        self._alive()
        result = self.cluster.kubectl("get", "node", NODE_NAME, "-o",
                                      'jsonpath={.status.conditions[?(@.type=="Ready")].status}', check=False)
        return result.returncode == 0 and result.stdout.strip() == "True"

    @staticmethod
    def _terminate(process: subprocess.Popen, log) -> None:
        terminate(process)
        log.close()

    def _drain(self) -> None:
        """This node's pods deleted through the API: the kubelet stops their containers and
        sandboxes (the CNI DEL that removes each network namespace and veth happens only through
        it)."""
        kubelet = [p for p, _ in self.processes if Path(p.args[0]).name == "kubelet"]
        if not kubelet or kubelet[0].poll() is not None or not self.socket.exists():
            return
        self.cluster.kubectl("delete", "pods", "--all-namespaces", f"--field-selector=spec.nodeName={NODE_NAME}",
                             "--grace-period=0", "--force", "--wait=false", check=False)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self._running_tasks():
            time.sleep(1)

    def _remove_containers(self) -> None:
        """Whatever containerd still holds, killed and deleted (each shim exits with its last)."""
        if not self.socket.exists():
            return
        base = ["ctr", "--address", str(self.socket), "-n", "k8s.io"]
        listed = subprocess.run([*base, "containers", "ls", "-q"], capture_output=True, text=True, check=False,
                                timeout=30)
        for container in listed.stdout.split():
            for args in (["tasks", "kill", "-a", "-s", "SIGKILL", container], ["tasks", "delete", "-f", container],
                         ["containers", "delete", container]):
                subprocess.run([*base, *args], capture_output=True, check=False, timeout=30)

    def _running_tasks(self) -> list[str]:
        result = subprocess.run(["ctr", "--address", str(self.socket), "-n", "k8s.io", "tasks", "ls"],
                                capture_output=True, text=True, check=False, timeout=30)
        return [line.split()[0] for line in result.stdout.splitlines()[1:] if "RUNNING" in line.split()]

    def _kill_shims(self) -> None:
        """Shims outlive a stopped containerd by design; those of this node's socket (and their
        containers) are ended by process id."""
        marker = f"-address {self.socket}".encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if marker not in (entry / "cmdline").read_bytes().replace(b"\0", b" "):
                    continue
                children = (entry / "task" / entry.name / "children").read_text().split()
            except OSError:
                continue
            for pid in [*children, entry.name]:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def _unmount(self) -> None:
        """The kubelet's volume tmpfs and containerd's rootfs mounts under the work directory."""
        root = str(self.workdir.resolve()) + os.sep
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4] for line in f]
        for point in sorted((p for p in points if p.startswith(root)), key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def _remove_firewall_chains() -> None:
    """The CNI firewall plugin's chains (its per-pod rules go with each pod; the chains and their
    jump from FORWARD stay): removed, so the host's FORWARD chain is as before."""
    for args in (["-D", "FORWARD", "-m", "comment", "--comment", "CNI firewall plugin rules", "-j", "CNI-FORWARD"],
                 ["-F", "CNI-FORWARD"], ["-X", "CNI-FORWARD"], ["-F", "CNI-ADMIN"], ["-X", "CNI-ADMIN"]):
        subprocess.run(["iptables", *args], capture_output=True, check=False, timeout=30)
