"""By hand, not in CI (CI cannot download the chart): `helm install` the RELEASED Temporal chart with
an export's values on the kube tier's real kube-apiserver (tests/support/kube_cluster.py), after
the export's Secrets and manifests, as docs/kubernetes.md says. Prints what the API server
admitted and what the chart did with the bundle's TLS; exit 0 when every check holds.

    git -C helm-charts archive temporal-1.6.0 charts/temporal | tar -x -C /tmp/chart
    python3 scripts/check-released-chart.py --chart /tmp/chart/charts/temporal --helm $(command -v helm)

Checks: the install succeeds (without the chart's pre-install hooks, which helm would wait for
until a kubelet ran them: they get a server-side dry run instead); the server ConfigMap's global.tls has certFile, keyFile and
requireClientAuth for frontend and internode; every file the server config names lies under a
mount of a Secret that exists, in every server Deployment; each of the chart's pods is admitted by
the namespace's Pod Security (namespace.yaml), with the `restricted` warnings it draws printed,
and holds no service-account token (its account, manifests/chart-service-account.yaml, mounts none).
No kubelet runs here: pods are admitted, not started.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.bundles import make_bundle  # noqa: E402
from tests.support.exports import CONFIG, export  # noqa: E402
from tests.support.kube_cluster import KubeCluster  # noqa: E402
from tests.support.kube_temporal import holds_an_api_token  # noqa: E402

RELEASE = "temporal"


def files_named(tls: dict) -> set[str]:
    found = set()
    for value in tls.values():
        if isinstance(value, dict):
            found |= files_named(value)
        elif isinstance(value, list):
            found |= {v for v in value if isinstance(v, str) and v.startswith("/")}
        elif isinstance(value, str) and value.startswith("/"):
            found.add(value)
    return found


def check(kube: KubeCluster, namespace: str) -> list[str]:
    problems = []
    get = lambda *a: json.loads(kube.kubectl("get", *a, "-n", namespace, "-o", "json").stdout)  # noqa: E731
    template = get("configmap", f"{RELEASE}-config")["data"]["config_template.yaml"]
    # The server renders the {{ env ... }} expressions at start; as YAML they are placeholders.
    config = yaml.safe_load(re.sub(r"\{\{.*?\}\}", "TEMPLATED", template))
    tls = config["global"].get("tls") or {}
    for side in ("frontend", "internode"):
        server = tls.get(side, {}).get("server", {})
        for key in ("certFile", "keyFile", "requireClientAuth"):
            if not server.get(key):
                problems.append(f"global.tls.{side}.server.{key} missing")
    secrets = {s["metadata"]["name"] for s in get("secrets")["items"]}
    servers = [d for d in get("deployments")["items"]
               if d["metadata"]["labels"].get("app.kubernetes.io/component") in
               ("frontend", "internal-frontend", "history", "matching", "worker")]
    if len(servers) != 5:
        problems.append(f"{len(servers)} server Deployments, not 5")
    for deployment in servers:
        pod = deployment["spec"]["template"]["spec"]
        volumes = {v["name"]: v.get("secret", {}).get("secretName") for v in pod["volumes"]}
        mounts = [(m["mountPath"], volumes.get(m["name"])) for c in pod["containers"] for m in c["volumeMounts"]]
        for path in sorted(files_named(tls)):
            holders = [secret for mount, secret in mounts if path.startswith(mount.rstrip("/") + "/")]
            if not holders or holders[0] not in secrets:
                problems.append(f"{deployment['metadata']['name']}: {path} is on no mounted Secret that exists")
    print(f"global.tls names {len(files_named(tls))} files; checked in {len(servers)} server Deployments")
    return problems


def pod_security(kube: KubeCluster, namespace: str, hooks: str) -> list[str]:
    """Each of the chart's pods (from its Deployments and its hook Jobs) asked for as a Pod in the
    namespace, on a server-side dry run: Pod Security's `enforce` level must admit it. Prints
    the `restricted` warnings it draws, and whether the admitted pod holds an API token (no
    kubelet runs here, so no pod is made any other way)."""
    deployments = kube.get("deployments", "-n", namespace, "-l", "app.kubernetes.io/managed-by=Helm")["items"]
    jobs = [d for d in yaml.safe_load_all(hooks) if d and d.get("kind") == "Job"]
    problems = []
    for workload in deployments + jobs:
        name = workload["metadata"]["name"]
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{name}-pod-security"},
               "spec": workload["spec"]["template"]["spec"]}
        answer = kube.kubectl("apply", "--dry-run=server", "-n", namespace, "-o", "json", "-f", "-",
                              input=json.dumps(pod), check=False)
        warned = [line.split("would violate", 1)[1].strip() for line in answer.stderr.splitlines() if "would violate" in line]
        token = answer.returncode == 0 and holds_an_api_token(json.loads(answer.stdout))
        print(f"pod security, {workload['kind']} {name}: exit {answer.returncode}; warned: {warned or 'nothing'}; "
              f"API token mounted: {token}")
        if answer.returncode != 0:
            problems.append(f"{workload['kind']} {name}: its pod is refused: {answer.stderr.strip()}")
        if token:
            problems.append(f"{workload['kind']} {name}: its pod mounts a service-account token it never uses")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chart", required=True, type=Path)
    parser.add_argument("--helm", required=True)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="released-chart-"))
    kube = KubeCluster(work / "kube").start()
    try:
        bundle = make_bundle(work / "bundle", CONFIG)
        dest = work / "export"
        result = export(bundle, dest)
        if result.code != 0:
            print(f"error: export-helm: {result.err.strip()}")
            return 1
        namespace = bundle.config.kubernetes.namespace
        kube.kubectl("apply", "-f", str(dest / "namespace.yaml"))
        kube.kubectl("apply", "-f", str(dest / "secrets"), "-f", str(dest / "manifests"))
        chart = yaml.safe_load((args.chart / "Chart.yaml").read_text())
        common = [str(args.chart), "-n", namespace, "-f", str(dest / "values.yaml"), "--kubeconfig", str(kube.kubeconfig)]
        # The chart's pre-install hooks (its schema Job and that Job's Secret) would be waited for
        # until they complete, which needs a kubelet: the API server is asked to admit them (a
        # server-side dry run), and the install runs without them.
        hooks = subprocess.run([args.helm, "template", RELEASE, *common, "--show-only", "templates/server-job.yaml",
                                "--show-only", "templates/server-secret.yaml"], capture_output=True, text=True, timeout=300)
        admitted = kube.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", input=hooks.stdout, check=False)
        print(f"hooks (dry run on the API server): exit {admitted.returncode}: {(admitted.stdout + admitted.stderr).split()}")
        installed = subprocess.run([args.helm, "install", RELEASE, *common, "--no-hooks"],
                                   capture_output=True, text=True, timeout=300)
        version = subprocess.run([args.helm, "version", "--short"], capture_output=True, text=True).stdout.strip()
        server = json.loads(kube.kubectl("version", "-o", "json").stdout)["serverVersion"]["gitVersion"]
        print(f"chart {chart['version']} (appVersion {chart['appVersion']}), helm {version}, kube-apiserver {server}")
        print(f"helm install: exit {installed.returncode}: {(installed.stdout + installed.stderr).strip().splitlines()[:3]}")
        if installed.returncode != 0 or hooks.returncode != 0 or admitted.returncode != 0:
            return 1
        listing = kube.kubectl("get", "all,configmaps,secrets,serviceaccounts,networkpolicies,jobs", "-n", namespace,
                               "-o", "name").stdout.split()
        kinds: dict[str, int] = {}
        for name in listing:
            kinds[name.split("/")[0]] = kinds.get(name.split("/")[0], 0) + 1
        print("admitted: " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))
        problems = check(kube, namespace) + pod_security(kube, namespace, hooks.stdout)
        for problem in problems:
            print(f"problem: {problem}")
        print("ok: every check holds" if not problems else f"{len(problems)} problems")
        return 1 if problems else 0
    finally:
        kube.stop()


if __name__ == "__main__":
    sys.exit(main())
