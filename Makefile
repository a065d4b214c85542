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
	cargo clippy --workspace --all-targets --locked -- -D warnings

## promtool: the alert/recording rules, their unit tests and the dashboard's queries.
## Installs Debian's prometheus package when missing (the tests also run its server).
rules:
	hack/test-prometheus-rules.sh

## The main job: a local scale run with a report (override DEMO_ARGS, e.g.
## DEMO_ARGS="--clusters 1000 --ceiling"). Builds the control plane first if needed.
DEMO_ARGS ?= --clusters 100 --ceiling --report target/demo-report.json --plot target/demo.svg
demo:
	assets=$$(hack/envtest-assets.sh) && \
	  cargo build --release --locked -p metal3-fakenode -p metal3-fakenode-front -p metal3-fakenode-bench && \
	  $(ASSETS_ENV)=$$assets target/release/metal3-fakenode-bench demo $(DEMO_ARGS)

## End to end with the real upstream controllers (override E2E_ARGS, e.g.
## E2E_ARGS="--clusters 50"). Builds them and the control plane first if needed.
E2E_ARGS ?= --clusters 10 --report target/e2e-report.json
e2e:
	assets=$$(hack/envtest-assets.sh) && e2e=$$(hack/e2e-assets.sh) && \
	  cargo build --release --locked -p metal3-fakenode -p metal3-fakenode-front -p metal3-fakenode-bench && \
	  $(ASSETS_ENV)=$$assets $(E2E_ASSETS_ENV)=$$e2e target/release/metal3-fakenode-bench e2e $(E2E_ARGS)

## The whole suite: lint, rules, unit tests and integration tests against real API
## servers, a real Prometheus and the real upstream controllers (the bench's e2e, small).
## A plain `cargo test` runs the unit tests and marks the integration tests ignored;
## METAL3_FAKENODE_REQUIRE_ASSETS makes them run (and fail without their assets).
## Without incremental compilation (here and in its lint): a one-off build gains nothing
## from it, and its cache (about 2 GiB for the suite) can fill a small CI disk.
test: export CARGO_INCREMENTAL := 0
test: lint rules
	assets=$$(hack/envtest-assets.sh) && e2e=$$(hack/e2e-assets.sh) && \
	  METAL3_FAKENODE_REQUIRE_ASSETS=1 $(ASSETS_ENV)=$$assets $(E2E_ASSETS_ENV)=$$e2e cargo test --workspace --locked
