//go:build tools

// Package crds only pins the modules that hold the upstream CRD sources.
package crds

import (
	_ "github.com/metal3-io/baremetal-operator/apis/metal3.io/v1alpha1"
	_ "github.com/metal3-io/cluster-api-provider-metal3/api/v1beta1"
	_ "github.com/metal3-io/cluster-api-provider-metal3/api/v1beta2"
	_ "sigs.k8s.io/cluster-api/api/core/v1beta2"
	_ "sigs.k8s.io/controller-tools/cmd/controller-gen"
)
