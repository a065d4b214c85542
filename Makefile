# The two commands of the README: `make test` and `make demo`. Both set up what they
# need on a fresh machine (the control plane is built from the Go module proxy and cached).
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
ASSETS_ENV := METAL3_FAKENODE_ENVTEST_ASSETS

.PHONY: test lint rules envtest demo

## Build (once) kube-apiserver, etcd and the upstream CRDs; print where they are.
envtest:
	@hack/envtest-assets.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets --locked -- -D warnings

## promtool: the alert/recording rules, their unit tests and the dashboard's queries.
## Installs Debian's prometheus package when missing (the tests also run its server).
rules:
	hack/test-prometheus-rules.sh

## The main job: a local scale run with a report (override DEMO_ARGS, e.g.
## DEMO_ARGS="--clusters 1000 --ceiling"). Builds the control plane first if needed.
DEMO_ARGS ?= --clusters 100 --ceiling --report target/demo-report.json --plot target/demo.svg
demo:
	assets=$$(hack/envtest-assets.sh) && $(ASSETS_ENV)=$$assets cargo run --release --locked -- demo $(DEMO_ARGS)

## The whole suite: lint, rules, unit tests and integration tests against real API
## servers and a real Prometheus.
test: lint rules
	assets=$$(hack/envtest-assets.sh) && $(ASSETS_ENV)=$$assets cargo test --locked
