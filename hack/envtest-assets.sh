#!/usr/bin/env bash
# Builds the local control plane for tests and the demo, from the Go module proxy only:
#   - kube-apiserver and etcd, from the wrapper module in hack/envtest;
#   - the upstream CRDs of CAPI (YAML shipped in its module) and of CAPM3 and the
#     baremetal-operator (generated with controller-gen from their published api modules),
#     pinned by hack/crds;
#   - what tests/deploy.rs checks deploy/ with, pinned by hack/crds/deploy: the
#     prometheus-operator ServiceMonitor CRD (YAML shipped in its module) and kustomize,
#     so the tests need no preinstalled kubectl;
#   - hack/kubelet-probe, which drives a fake kubelet endpoint with the real clients of
#     KCP (client-go's port-forward, etcd's clientv3). It changes with the repository,
#     not with a pin, so it is keyed by a hash of its sources (and of the Go release),
#     kept in a stamp file beside it, and rebuilt alone when only it changed.
# Everything lands in a cache directory outside the repository, keyed by version, so a
# second run is a no-op. Prints the assets directory as its last line of stdout; progress
# goes to stderr.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache_root=${METAL3_FAKENODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/metal3-fakenode}
log() { printf 'envtest-assets: %s\n' "$*" >&2; }
# shellcheck source=hack/lib.sh
source "$here/lib.sh"

if ! command -v go >/dev/null 2>&1; then
  log "Go is not installed: it is needed to build kube-apiserver and etcd (Go >= 1.26)."
  exit 1
fi

modver() { (cd "$1" && go list -m -f '{{.Version}}' "$2"); }

k8s_version=$(modver "$here/envtest" k8s.io/kubernetes)
etcd_version=$(modver "$here/envtest" go.etcd.io/etcd/server/v3)
capi_version=$(modver "$here/crds" sigs.k8s.io/cluster-api)
capm3_version=$(modver "$here/crds" github.com/metal3-io/cluster-api-provider-metal3/api)
bmo_version=$(modver "$here/crds" github.com/metal3-io/baremetal-operator/apis)
cgen_version=$(modver "$here/crds" sigs.k8s.io/controller-tools)
promop_version=$(modver "$here/crds/deploy" github.com/prometheus-operator/prometheus-operator)
kustomize_version=$(modver "$here/crds/deploy" sigs.k8s.io/kustomize/kustomize/v5)

probe_dir="$here/kubelet-probe"
probe_key=$(cd "$probe_dir" && { go env GOVERSION; sha256sum go.mod go.sum ./*.go; } | sha256sum | cut -d' ' -f1)

# Builds the probe into directory $1 and stamps it with the hash of its sources.
build_probe() {
  local dir=$1 tmp
  log "building kubelet-probe (sources ${probe_key:0:12})..."
  tmp=$(mktemp "$dir/.kubelet-probe.XXXXXX")
  if ! (cd "$probe_dir" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$tmp" .); then
    rm -f "$tmp"
    return 1
  fi
  mv "$tmp" "$dir/kubelet-probe"
  echo "$probe_key" >"$dir/kubelet-probe.stamp"
}
probe_current() {
  [[ -x "$1/kubelet-probe" && "$(cat "$1/kubelet-probe.stamp" 2>/dev/null)" == "$probe_key" ]]
}

k8s_key="k8s-$k8s_version-etcd-$etcd_version"
assets="$cache_root/envtest/$k8s_key-capi-$capi_version-capm3-$capm3_version-bmo-$bmo_version-promop-$promop_version-kustomize-$kustomize_version"
if [[ -x "$assets/kube-apiserver" && -x "$assets/etcd" && -x "$assets/kustomize" && -f "$assets/crds/.complete" ]]; then
  probe_current "$assets" || build_probe "$assets"
  log "up to date: $assets"
  echo "$assets"
  exit 0
fi

mkdir -p "$cache_root/envtest"
work=$(mktemp -d "$cache_root/envtest/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT

# The slow part: reuse the binaries of an assets directory for the same Kubernetes and
# etcd versions when only the CRD or kustomize pins changed.
reuse_k8s() {
  local old
  for old in "$cache_root/envtest/$k8s_key"-*; do
    if [[ -x "$old/kube-apiserver" && -x "$old/etcd" ]]; then
      log "reusing kube-apiserver $k8s_version and etcd $etcd_version from $old"
      cp "$old/kube-apiserver" "$old/etcd" "$work/"
      return 0
    fi
  done
  return 1
}

build_k8s() {
  local flags
  flags=$(k8s_version_ldflags "$k8s_version")
  log "building kube-apiserver $k8s_version (the first build takes several minutes)..."
  (cd "$here/envtest" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w $flags" \
    -o "$work/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver)
  log "building etcd $etcd_version..."
  (cd "$here/envtest" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" \
    -o "$work/etcd" go.etcd.io/etcd/server/v3)
}

build_crds() {
  log "collecting CRDs: CAPI $capi_version, CAPM3 $capm3_version, BMO $bmo_version (controller-gen $cgen_version)..."
  mkdir -p "$work/crds/capi" "$work/crds/capm3" "$work/crds/bmo"
  (cd "$here/crds" && go build -o "$work/controller-gen" sigs.k8s.io/controller-tools/cmd/controller-gen)
  local capi_dir
  capi_dir=$(cd "$here/crds" && go mod download -json sigs.k8s.io/cluster-api | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
  local f
  for f in \
    config/crd/bases/cluster.x-k8s.io_clusters.yaml \
    config/crd/bases/cluster.x-k8s.io_machines.yaml \
    config/crd/bases/cluster.x-k8s.io_machinesets.yaml \
    config/crd/bases/cluster.x-k8s.io_machinedeployments.yaml \
    config/crd/bases/cluster.x-k8s.io_machinehealthchecks.yaml \
    controlplane/kubeadm/config/crd/bases/controlplane.cluster.x-k8s.io_kubeadmcontrolplanes.yaml \
    bootstrap/kubeadm/config/crd/bases/bootstrap.cluster.x-k8s.io_kubeadmconfigs.yaml \
    bootstrap/kubeadm/config/crd/bases/bootstrap.cluster.x-k8s.io_kubeadmconfigtemplates.yaml; do
    install -m 0644 "$capi_dir/$f" "$work/crds/capi/"
  done
  # The same generator options as the upstream Makefiles.
  (cd "$here/crds" && "$work/controller-gen" crd:crdVersions=v1 \
    paths=github.com/metal3-io/cluster-api-provider-metal3/api/... output:crd:dir="$work/crds/capm3")
  (cd "$here/crds" && "$work/controller-gen" crd:allowDangerousTypes=true,crdVersions=v1 \
    paths=github.com/metal3-io/baremetal-operator/apis/metal3.io/v1alpha1 output:crd:dir="$work/crds/bmo")
  rm "$work/controller-gen"
  log "collecting the ServiceMonitor CRD of prometheus-operator $promop_version..."
  mkdir -p "$work/crds/prometheus-operator"
  local promop_dir
  promop_dir=$(cd "$here/crds/deploy" && go mod download -json github.com/prometheus-operator/prometheus-operator | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
  install -m 0644 "$promop_dir/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml" \
    "$work/crds/prometheus-operator/"
  touch "$work/crds/.complete"
}

# `go install module@version` builds kustomize from its own go.mod, as released.
build_kustomize() {
  log "building kustomize $kustomize_version..."
  (cd "$work" && GOBIN="$work" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" \
    "sigs.k8s.io/kustomize/kustomize/v5@$kustomize_version")
}

reuse_k8s || build_k8s
build_crds
build_kustomize
build_probe "$work"
rm -rf "$assets"
mv "$work" "$assets"
trap - EXIT
"$assets/kube-apiserver" --version >&2
log "ready: $assets"
echo "$assets"
