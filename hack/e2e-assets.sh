#!/usr/bin/env bash
# Builds what the end-to-end run needs, from the Go module proxy only (pinned by hack/e2e):
#   - the real upstream controllers: CAPI core, the kubeadm control-plane provider (KCP),
#     the kubeadm bootstrap provider (CABPK), CAPM3 and the baremetal-operator;
#   - kube-controller-manager (from hack/envtest, the API server's release) for the
#     management cluster's garbage collector and namespace controller, which Cluster
#     deletion relies on;
#   - their released CRDs and webhook configurations, as shipped in their modules, plus the
#     CRDs of Metal3's IP address manager (CAPM3 watches its kinds, but never needs it run).
# Everything lands in a cache directory outside the repository, keyed by version, so a
# second run is a no-op. Prints the assets directory as its last line of stdout.
# The kube-apiserver and etcd come from hack/envtest-assets.sh.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache_root=${METAL3_FAKENODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/metal3-fakenode}
log() { printf 'e2e-assets: %s\n' "$*" >&2; }
# shellcheck source=hack/lib.sh
source "$here/lib.sh"

if ! command -v go >/dev/null 2>&1; then
  log "Go is not installed: it is needed to build the upstream controllers (Go >= 1.26)."
  exit 1
fi

mod="$here/e2e"
modver() { (cd "$mod" && go list -m -f '{{.Version}}' "$1"); }
moddir() { (cd "$mod" && go mod download -json "$1" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p'); }

capi_version=$(modver sigs.k8s.io/cluster-api)
capm3_version=$(modver github.com/metal3-io/cluster-api-provider-metal3)
bmo_version=$(modver github.com/metal3-io/baremetal-operator)
ipam_version=$(modver github.com/metal3-io/ip-address-manager/api)
k8s_version=$(cd "$here/envtest" && go list -m -f '{{.Version}}' k8s.io/kubernetes)

assets="$cache_root/e2e/capi-$capi_version-capm3-$capm3_version-bmo-$bmo_version-ipam-$ipam_version-k8s-$k8s_version"
if [[ -f "$assets/.complete" ]]; then
  log "up to date: $assets"
  echo "$assets"
  exit 0
fi

mkdir -p "$cache_root/e2e"
work=$(mktemp -d "$cache_root/e2e/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT

# name, Go package, version ldflag package (optional)
build() {
  local name=$1 pkg=$2
  log "building $name ($pkg)..."
  (cd "$mod" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w ${3:-}" -o "$work/bin/$name" "$pkg")
}

capi_ldflags="-X sigs.k8s.io/cluster-api/version.gitVersion=$capi_version"
log "building the controllers: CAPI $capi_version, CAPM3 $capm3_version, BMO $bmo_version (a cold build takes several minutes)"
build cluster-api sigs.k8s.io/cluster-api "$capi_ldflags"
build kubeadm-control-plane sigs.k8s.io/cluster-api/controlplane/kubeadm "$capi_ldflags"
build kubeadm-bootstrap sigs.k8s.io/cluster-api/bootstrap/kubeadm "$capi_ldflags"
build cluster-api-provider-metal3 github.com/metal3-io/cluster-api-provider-metal3
build baremetal-operator github.com/metal3-io/baremetal-operator
log "building kube-controller-manager $k8s_version..."
(cd "$here/envtest" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w $(k8s_version_ldflags "$k8s_version")" \
  -o "$work/bin/kube-controller-manager" k8s.io/kubernetes/cmd/kube-controller-manager)

# The CRDs as each provider's own kustomization renders them: its contract-version labels
# (which Cluster API reads to pick an API version) and which CRDs convert through its
# webhook. The run points the webhook Service references at loopback URLs.
kustomize="$("$here/envtest-assets.sh")/kustomize"

# provider name, kustomization directory of its CRDs, webhook manifests
collect() {
  local name=$1 crds=$2 webhooks=$3
  mkdir -p "$work/providers/$name"
  "$kustomize" build "$crds" > "$work/providers/$name/crds.yaml"
  install -m 0644 "$webhooks" "$work/providers/$name/webhooks.yaml"
}

log "collecting the released CRDs and webhook configurations..."
capi_dir=$(moddir sigs.k8s.io/cluster-api)
capm3_dir=$(moddir github.com/metal3-io/cluster-api-provider-metal3)
bmo_dir=$(moddir github.com/metal3-io/baremetal-operator)
collect cluster-api "$capi_dir/config/crd" "$capi_dir/config/webhook/manifests.yaml"
collect kubeadm-control-plane "$capi_dir/controlplane/kubeadm/config/crd" \
  "$capi_dir/controlplane/kubeadm/config/webhook/manifests.yaml"
collect kubeadm-bootstrap "$capi_dir/bootstrap/kubeadm/config/crd" \
  "$capi_dir/bootstrap/kubeadm/config/webhook/manifests.yaml"
collect cluster-api-provider-metal3 "$capm3_dir/config/crd" "$capm3_dir/config/webhook/manifests.yaml"
collect baremetal-operator "$bmo_dir/config/base/crds" "$bmo_dir/config/base/webhook/manifests.yaml"

# The IP address manager's root module is not needed to build anything; its CRDs are
# generated from its API module (the version CAPM3 requires) with the same generator and
# options as its Makefile, using the controller-gen pinned in hack/crds.
(cd "$here/crds" && go build -o "$work/controller-gen" sigs.k8s.io/controller-tools/cmd/controller-gen)
mkdir -p "$work/ipam" "$work/providers/ip-address-manager"
(cd "$mod" && "$work/controller-gen" crd:crdVersions=v1 \
  paths=github.com/metal3-io/ip-address-manager/api/v1alpha1 output:crd:dir="$work/ipam")
for f in "$work"/ipam/*.yaml; do
  cat "$f"
  echo "---"
done > "$work/providers/ip-address-manager/crds.yaml"
rm -rf "$work/controller-gen" "$work/ipam"

touch "$work/.complete"
rm -rf "$assets"
mv "$work" "$assets"
trap - EXIT
log "ready: $assets"
echo "$assets"
