//go:build tools

// Package e2e only pins the upstream controllers' modules; nothing here is compiled.
package e2e

import (
	_ "github.com/metal3-io/baremetal-operator"
	_ "github.com/metal3-io/cluster-api-provider-metal3"
	_ "sigs.k8s.io/cluster-api"
	_ "sigs.k8s.io/cluster-api/bootstrap/kubeadm"
	_ "sigs.k8s.io/cluster-api/controlplane/kubeadm"
)
