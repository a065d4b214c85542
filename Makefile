# The two commands of the README: `make test` and `make demo`. Both set up what they
# need on a fresh machine (the control plane is built from the Go module proxy and cached).
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
ASSETS_ENV := METAL3_FAKENODE_ENVTEST_ASSETS
E2E_ASSETS_ENV := METAL3_FAKENODE_E2E_ASSETS

.PHONY: test lint rules envtest e2e-assets demo e2e

## Build (once) kube-apiserver, etcd and the upstream CRDs; print where they are.
envtest:
	@hack/envtest-assets.sh

## Build (once) the real CAPI, KCP, CABPK, CAPM3 and baremetal-operator; print where.
e2e-assets:
	@hack/e2e-assets.sh

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

## End to end with the real upstream controllers (override E2E_ARGS, e.g.
## E2E_ARGS="--clusters 50"). Builds them and the control plane first if needed.
E2E_ARGS ?= --clusters 10 --report target/e2e-report.json
e2e:
	assets=$$(hack/envtest-assets.sh) && e2e=$$(hack/e2e-assets.sh) && \
	  $(ASSETS_ENV)=$$assets $(E2E_ASSETS_ENV)=$$e2e cargo run --release --locked -- e2e $(E2E_ARGS)

## The whole suite: lint, rules, unit tests and integration tests against real API
## servers, a real Prometheus and the real upstream controllers (tests/e2e.rs, small).
test: lint rules
	assets=$$(hack/envtest-assets.sh) && e2e=$$(hack/e2e-assets.sh) && \
	  $(ASSETS_ENV)=$$assets $(E2E_ASSETS_ENV)=$$e2e cargo test --locked
