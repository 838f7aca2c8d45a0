#!/usr/bin/env bash
# Build the Kubernetes control plane the kube test tier runs, from the Go module proxy, cached by
# version: etcd, kube-apiserver, kubectl, and the node and controllers that run pods: kubelet,
# kube-proxy (Service routing), kube-scheduler and kube-controller-manager
# (tests/support/kube_node.py; the container runtime is Debian's containerd + runc, the CNI plugins
# Debian's containernetworking-plugins, the cluster DNS CoreDNS: scripts/build-coredns.sh).
#
# k8s.io/kubernetes cannot be `go install`ed: its go.mod replaces its staging modules (k8s.io/api,
# k8s.io/client-go, ...) with local paths. It builds as a dependency of a scratch module that pins
# every one of them to the matching published v0.x release with `replace` lines, read from the
# release's own go.mod so the list never drifts.
# Usage: scripts/build-kubernetes.sh [VERSION]   -> prints the cache directory on stdout.
# Env: KUBERNETES_VERSION (v1.37.2), ETCD_VERSION (v3.7.3), TEMPORAL_BUNDLE_CACHE, GOTOOLCHAIN.
set -euo pipefail
version="${1:-${KUBERNETES_VERSION:-v1.37.2}}"
etcd_version="${ETCD_VERSION:-v3.7.3}"
export GOTOOLCHAIN="${GOTOOLCHAIN:-go1.27.3}"
# "-node-proxy": the set with kubelet, kube-proxy, scheduler and controller manager; a cache of an
# older set (named without it) is never mistaken for this one.
cache="${TEMPORAL_BUNDLE_CACHE:-$HOME/.cache/temporal-bundle}/kube-$version-etcd-$etcd_version-node-proxy"
binaries=(etcd kube-apiserver kubectl kubelet kube-proxy kube-scheduler kube-controller-manager)
complete=1
for name in "${binaries[@]}"; do [[ -x "$cache/$name" ]] || complete=0; done
if ((complete)); then
  echo "$cache"
  exit 0
fi
command -v go >/dev/null || { echo "error: go toolchain not found" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "building Kubernetes $version and etcd $etcd_version (once; cached at $cache)" >&2
cd "$work"
# The staging modules are released as v0.<minor>.<patch> for Kubernetes v1.<minor>.<patch>.
staging_version="v0.${version#v1.}"
upstream_mod="$(go mod download -json "k8s.io/kubernetes@$version" | python3 -c 'import json, sys; print(json.load(sys.stdin)["GoMod"])')"
go_line="$(grep -m1 '^go ' "$upstream_mod")"
{
  echo "module kubernetes-build"
  echo
  echo "$go_line"
  echo
  echo "replace ("
  awk -v v="$staging_version" '$2 == "=>" && $3 ~ /^\.\/staging\// { print "\t" $1 " => " $1 " " v }' "$upstream_mod"
  echo ")"
} >go.mod
# etcd's own main package lives in its root module, whose go.mod also replaces its siblings:
# the same four lines of main the etcd binary runs, on its released server module.
mkdir -p cmd/etcd
cat >cmd/etcd/main.go <<'EOF'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
cat >tools.go <<'EOF'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
)
EOF
go get "k8s.io/kubernetes@$version" "go.etcd.io/etcd/server/v3@$etcd_version" >&2
go mod tidy >&2
mkdir -p bin
# The version the binaries report (`/version`, `kubectl version`), as the release build stamps it.
minor="${version#v1.}"
minor="${minor%%.*}"
stamp=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  stamp+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done
flags=(-trimpath -ldflags "-s -w$stamp")
# One go build for every main package: shared packages compile once, in parallel (static, as the
# release builds them).
packages=(./cmd/etcd)
for name in "${binaries[@]}"; do
  [[ "$name" == etcd ]] || packages+=("k8s.io/kubernetes/cmd/$name")
done
CGO_ENABLED=0 go build "${flags[@]}" -o bin/ "${packages[@]}" >&2
bin/kube-apiserver --version >&2
rm -rf "$cache.tmp" && mkdir -p "$cache.tmp"
for name in "${binaries[@]}"; do
  [[ -x "bin/$name" ]] || { echo "error: the build made no $name" >&2; exit 1; }
  mv "bin/$name" "$cache.tmp/$name"
done
rm -rf "$cache" && mv "$cache.tmp" "$cache"
echo "$cache"
