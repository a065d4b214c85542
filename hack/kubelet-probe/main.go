// Command kubelet-probe proves a fake kubelet endpoint against the real clients that
// Cluster API's KubeadmControlPlane (KCP) uses: it port-forwards to a Pod through the
// real kube-apiserver exactly as KCP does, then speaks etcd v3 gRPC over TLS, or a bare
// TLS handshake, or echoes bytes. Every subcommand prints one JSON object on stdout;
// errors go to stderr with a non-zero exit.
//
//	kubelet-probe etcd --kubeconfig K --pod etcd-<node> --ca CA --cert C --key K <op> [id]
//	kubelet-probe cert-expiry --kubeconfig K --pod kube-apiserver-<node>
//	kubelet-probe forward-echo --kubeconfig K --namespace N --pod P --port N --bytes N --connections C
//	kubelet-probe protobuf-writes --kubeconfig K
//
// With --endpoint host:port instead of --kubeconfig/--pod, the probe dials over plain
// TCP, to compare with a real server.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"
)

const usage = `usage: kubelet-probe <subcommand> [flags] [args]

subcommands:
  etcd [flags] <op> [id]   op: member-list | status | alarm-list | member-remove <id> | move-leader <id>
                           ids are hexadecimal, as etcdctl prints them (an optional 0x is accepted)
  cert-expiry [flags]      TLS handshake; the peer certificate KCP reads (CN kube-apiserver)
  forward-echo [flags]     --connections streams on one port-forward, --bytes each, echoed back
  protobuf-writes [flags]  what Cluster API writes into a workload cluster, with protobuf bodies
                           as controller-runtime sends them; prints the objects written

Run "kubelet-probe <subcommand> -h" for its flags.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	var run func(context.Context, *target, []string) (any, error)
	defaultPort := 0
	switch os.Args[1] {
	case "etcd":
		run, defaultPort = runEtcd, 2379
	case "cert-expiry":
		run, defaultPort = runCertExpiry, 6443
	case "forward-echo":
		run = runForwardEcho
	case "protobuf-writes":
		run = runProtobufWrites
	case "-h", "--help", "help":
		fmt.Print(usage)
		return
	default:
		fmt.Fprintf(os.Stderr, "kubelet-probe: unknown subcommand %q\n%s", os.Args[1], usage)
		os.Exit(2)
	}

	fs := flag.NewFlagSet("kubelet-probe "+os.Args[1], flag.ExitOnError)
	t := &target{}
	fs.StringVar(&t.kubeconfig, "kubeconfig", "", "kubeconfig of the API server to port-forward through")
	fs.StringVar(&t.namespace, "namespace", "kube-system", "namespace of the Pod")
	fs.StringVar(&t.pod, "pod", "", "Pod to port-forward to")
	fs.IntVar(&t.port, "port", defaultPort, "port of the Pod")
	fs.StringVar(&t.endpoint, "endpoint", "", "host:port to dial over plain TCP instead of port-forwarding")
	fs.StringVar(&t.transport, "transport", transportKCP,
		"port-forward transport: "+transportKCP+" (WebSocket-tunneled SPDY, falling back to SPDY, as KCP) or "+transportSPDY)
	timeout := fs.Duration("timeout", 30*time.Second, "deadline for the whole run")
	switch os.Args[1] {
	case "etcd":
		fs.StringVar(&tlsFiles.ca, "ca", "", "CA certificate (PEM) of the etcd cluster")
		fs.StringVar(&tlsFiles.cert, "cert", "", "client certificate (PEM), signed by the etcd CA")
		fs.StringVar(&tlsFiles.key, "key", "", "client private key (PEM)")
	case "forward-echo":
		fs.IntVar(&echo.bytes, "bytes", 1<<20, "bytes to send and read back on each connection")
		fs.IntVar(&echo.connections, "connections", 1, "forwarded connections on the one port-forward")
	}
	_ = fs.Parse(os.Args[2:]) // ExitOnError

	if os.Args[1] == "protobuf-writes" {
		// Writes through the API server itself: no Pod, no port.
		if t.kubeconfig == "" {
			fail(errors.New("--kubeconfig is required"))
		}
	} else if err := t.validate(); err != nil {
		fail(err)
	}
	ctx, cancel := context.WithTimeoutCause(context.Background(), *timeout,
		fmt.Errorf("timed out after %s", *timeout))
	defer cancel()

	// Not every client call takes a context (the WebSocket dialer does not), so the
	// deadline is enforced here too: a hung peer must fail the probe, not stall it.
	type result struct {
		out any
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, err := run(ctx, t, fs.Args())
		done <- result{out, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			fail(r.err)
		}
		enc := json.NewEncoder(os.Stdout)
		if err := enc.Encode(r.out); err != nil {
			fail(err)
		}
	case <-ctx.Done():
		// A grace period lets a call that honours the context report its own error.
		select {
		case r := <-done:
			if r.err != nil {
				fail(fmt.Errorf("%w (%v)", r.err, context.Cause(ctx)))
			}
			fail(context.Cause(ctx))
		case <-time.After(2 * time.Second):
			fail(context.Cause(ctx))
		}
	}
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "kubelet-probe %s: %v\n", os.Args[1], err)
	os.Exit(1)
}

// target is where a subcommand connects: a Pod's port through the API server, or a
// plain TCP endpoint.
type target struct {
	kubeconfig, namespace, pod string
	port                       int
	endpoint                   string
	transport                  string
}

func (t *target) validate() error {
	switch {
	case t.endpoint != "" && (t.kubeconfig != "" || t.pod != ""):
		return errors.New("--endpoint excludes --kubeconfig and --pod")
	case t.endpoint != "":
		return nil
	case t.kubeconfig == "" || t.pod == "":
		return errors.New("either --kubeconfig and --pod, or --endpoint, are required")
	case t.port <= 0 || t.port > 65535:
		return fmt.Errorf("--port %d is not a port", t.port)
	case t.transport != transportKCP && t.transport != transportSPDY:
		return fmt.Errorf("--transport is %s or %s, not %q", transportKCP, transportSPDY, t.transport)
	}
	return nil
}

// Subcommand flags, filled by flag parsing.
var (
	tlsFiles struct{ ca, cert, key string }
	echo     struct{ bytes, connections int }
)
