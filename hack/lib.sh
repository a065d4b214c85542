# Shared by the asset scripts; sourced, not run.

# The -X flags that make a Kubernetes binary built from the Go module report its version
# (without them /version says v0.0.0-master), as upstream's build sets them.
k8s_version_ldflags() {
  local version=$1 major minor pkg flags="" date
  major=${version#v}; major=${major%%.*}
  minor=${version#v*.}; minor=${minor%%.*}
  date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
  done
  echo "$flags"
}
