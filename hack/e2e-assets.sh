#!/usr/bin/env bash
# Builds what the end-to-end run needs, from the Go module proxy only (pinned by hack/e2e):
#   - the real upstream controllers: CAPI core, the kubeadm control-plane provider (KCP),
#     the kubeadm bootstrap provider (CABPK), CAPM3 and the baremetal-operator;
#   - their released CRDs and webhook configurations, as shipped in their modules, plus the
#     CRDs of Metal3's IP address manager (CAPM3 watches its kinds, but never needs it run).
# Everything lands in a cache directory outside the repository, keyed by version, so a
# second run is a no-op. Prints the assets directory as its last line of stdout.
# The kube-apiserver and etcd come from hack/envtest-assets.sh.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache_root=${METAL3_FAKENODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/metal3-fakenode}
log() { printf 'e2e-assets: %s\n' "$*" >&2; }

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

assets="$cache_root/e2e/capi-$capi_version-capm3-$capm3_version-bmo-$bmo_version-ipam-$ipam_version"
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

# provider name, source directory of CRDs, webhook manifests (or "")
collect() {
  local name=$1 crds=$2 webhooks=$3
  mkdir -p "$work/providers/$name/crds"
  install -m 0644 "$crds"/*.yaml "$work/providers/$name/crds/"
  if [[ -n "$webhooks" ]]; then
    install -m 0644 "$webhooks" "$work/providers/$name/webhooks.yaml"
  fi
}

log "collecting the released CRDs and webhook configurations..."
capi_dir=$(moddir sigs.k8s.io/cluster-api)
capm3_dir=$(moddir github.com/metal3-io/cluster-api-provider-metal3)
bmo_dir=$(moddir github.com/metal3-io/baremetal-operator)
# The IP address manager's root module is not needed to build anything; its CRDs are
# generated from its API module (the version CAPM3 requires) with the same generator and
# options as its Makefile, using the controller-gen pinned in hack/crds.
(cd "$here/crds" && go build -o "$work/controller-gen" sigs.k8s.io/controller-tools/cmd/controller-gen)
mkdir -p "$work/providers/ip-address-manager/crds"
(cd "$mod" && "$work/controller-gen" crd:crdVersions=v1 \
  paths=github.com/metal3-io/ip-address-manager/api/v1alpha1 \
  output:crd:dir="$work/providers/ip-address-manager/crds")
rm "$work/controller-gen"
collect cluster-api "$capi_dir/config/crd/bases" "$capi_dir/config/webhook/manifests.yaml"
collect kubeadm-control-plane "$capi_dir/controlplane/kubeadm/config/crd/bases" \
  "$capi_dir/controlplane/kubeadm/config/webhook/manifests.yaml"
collect kubeadm-bootstrap "$capi_dir/bootstrap/kubeadm/config/crd/bases" \
  "$capi_dir/bootstrap/kubeadm/config/webhook/manifests.yaml"
collect cluster-api-provider-metal3 "$capm3_dir/config/crd/bases" "$capm3_dir/config/webhook/manifests.yaml"
collect baremetal-operator "$bmo_dir/config/base/crds/bases" "$bmo_dir/config/base/webhook/manifests.yaml"

touch "$work/.complete"
rm -rf "$assets"
mv "$work" "$assets"
trap - EXIT
log "ready: $assets"
echo "$assets"
