// Pins what tests/deploy.rs checks the deploy/ manifests with: the ServiceMonitor CRD
// (YAML shipped in the prometheus-operator module) and kustomize. hack/envtest-assets.sh
// reads the versions here; nothing imports these modules and this module is never built
// (kustomize is built with `go install ...@version`, from its own go.mod), so do not
// run `go mod tidy` here: it would drop both requirements.
module github.com/metal3-io/metal3-fakenode/hack/crds/deploy

go 1.26.0

require (
	github.com/prometheus-operator/prometheus-operator v0.85.0
	sigs.k8s.io/kustomize/kustomize/v5 v5.8.2
)
