package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"time"
)

// The subject CN of the certificate kubeadm generates for kube-apiserver, which KCP
// looks for among the peer certificates.
const kubeadmAPIServerCertCN = "kube-apiserver"

type peerCert struct {
	CommonName string `json:"commonName"`
	NotAfter   string `json:"notAfter"`
}

type certExpiryResult struct {
	// The certificate KCP reads: the last peer certificate with CN kube-apiserver.
	CommonName string `json:"commonName"`
	NotAfter   string `json:"notAfter"`
	// Every certificate the server presented, leaf first.
	PeerCertificates []peerCert `json:"peerCertificates"`
	TLSVersion       string     `json:"tlsVersion"`
	// ALPN: KCP offers none, so this is empty against a conforming server.
	NegotiatedProtocol string     `json:"negotiatedProtocol"`
	PortForwards       []*forward `json:"portForwards,omitempty"`
}

// runCertExpiry does what KCP's Workload.GetAPIServerCertificateExpiry does
// (controlplane/kubeadm/internal/workload_cluster.go): dial the Pod's port, a TLS
// handshake with InsecureSkipVerify and nothing else configured (no client certificate,
// no ALPN, SNI unset as the config names no server), then the NotAfter of the peer
// certificate whose CN is kube-apiserver.
func runCertExpiry(ctx context.Context, t *target, args []string) (any, error) {
	if len(args) != 0 {
		return nil, fmt.Errorf("unexpected arguments %q", args)
	}
	var fwd *forwarder
	var raw net.Conn
	var err error
	if t.endpoint != "" {
		raw, err = dialTCP(ctx, t.endpoint)
	} else {
		if fwd, err = newForwarder(t); err != nil {
			return nil, err
		}
		raw, err = fwd.dial(ctx, t.pod)
	}
	if err != nil {
		return nil, err
	}
	conn := tls.Client(raw, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // As KCP does.
	if err := conn.HandshakeContext(ctx); err != nil {
		_ = raw.Close()
		return nil, fwd.explain(fmt.Errorf("TLS handshake: %w", err))
	}
	defer conn.Close()

	state := conn.ConnectionState()
	out := &certExpiryResult{
		PeerCertificates:   []peerCert{},
		TLSVersion:         tls.VersionName(state.Version),
		NegotiatedProtocol: state.NegotiatedProtocol,
	}
	found := false
	for _, c := range state.PeerCertificates {
		pc := peerCert{c.Subject.CommonName, c.NotAfter.UTC().Format(time.RFC3339)}
		out.PeerCertificates = append(out.PeerCertificates, pc)
		if c.Subject.CommonName == kubeadmAPIServerCertCN {
			out.CommonName, out.NotAfter, found = pc.CommonName, pc.NotAfter, true
		}
	}
	if !found {
		return nil, fmt.Errorf("no peer certificate with CN %q (KCP would fail): got %v",
			kubeadmAPIServerCertCN, out.PeerCertificates)
	}
	if fwd != nil {
		out.PortForwards = fwd.report()
	}
	return out, nil
}
