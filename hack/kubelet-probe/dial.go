package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
)

const (
	// KCP's dialer: SPDY tunneled in a WebSocket, falling back to plain SPDY when the
	// API server refuses the upgrade.
	transportKCP = "websocket"
	// Plain SPDY, the fallback alone.
	transportSPDY = "spdy"

	// KCP's proxy.Dialer overrides the rest.Config timeout with its default of 10s.
	kcpDialerTimeout = 10 * time.Second
)

// forwarder opens port-forward connections to Pods of one namespace, as KCP's
// proxy.Dialer does (controlplane/kubeadm/internal/proxy/dial.go).
type forwarder struct {
	config    *rest.Config
	clientset *kubernetes.Clientset
	spdyRT    http.RoundTripper
	upgrader  spdy.Upgrader
	namespace string
	port      int
	transport string

	mu sync.Mutex
	// One per port-forward connection opened: what the kubelet end saw.
	forwards []*forward
}

// forward is one port-forward connection and what its kubelet end reported.
type forward struct {
	Pod      string `json:"pod"`
	Protocol string `json:"protocol"`
	// Streams opened on it (one error and one data stream each).
	Streams int `json:"streams"`
	// What the kubelet end wrote on the error streams, if anything.
	Errors []string `json:"errors,omitempty"`

	mu   sync.Mutex
	wait sync.WaitGroup
}

func newForwarder(t *target) (*forwarder, error) {
	config, err := clientcmd.BuildConfigFromFlags("", t.kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("loading kubeconfig: %w", err)
	}
	config.Timeout = kcpDialerTimeout
	clientset, err := kubernetes.NewForConfig(config)
	if err != nil {
		return nil, err
	}
	spdyRT, upgrader, err := spdy.RoundTripperFor(config)
	if err != nil {
		return nil, err
	}
	return &forwarder{
		config: config, clientset: clientset, spdyRT: spdyRT, upgrader: upgrader,
		namespace: t.namespace, port: t.port, transport: t.transport,
	}, nil
}

// connect upgrades one POST pods/<pod>/portforward request to a multiplexed
// connection, on which each forwarded TCP connection is a pair of streams.
func (f *forwarder) connect(ctx context.Context, pod string) (httpstream.Connection, *forward, error) {
	if err := context.Cause(ctx); err != nil {
		return nil, nil, err
	}
	url := f.clientset.CoreV1().RESTClient().Post().
		Resource("pods").Namespace(f.namespace).Name(pod).SubResource("portforward").URL()
	client := &http.Client{Transport: f.spdyRT}
	if deadline, ok := ctx.Deadline(); ok {
		client.Timeout = time.Until(deadline)
	}
	var dialer httpstream.Dialer = spdy.NewDialer(f.upgrader, client, http.MethodPost, url)
	if f.transport == transportKCP {
		tunneling, err := portforward.NewSPDYOverWebsocketDialer(url, f.config)
		if err != nil {
			return nil, nil, fmt.Errorf("creating the WebSocket tunneling dialer: %w", err)
		}
		dialer = portforward.NewFallbackDialer(tunneling, dialer, func(err error) bool {
			return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
		})
	}
	conn, protocol, err := dialer.Dial(portforward.PortForwardProtocolV1Name)
	if err != nil {
		return nil, nil, fmt.Errorf("port-forward to pod %s/%s: upgrading the connection: %w", f.namespace, pod, err)
	}
	fw := &forward{Pod: pod, Protocol: protocol}
	f.mu.Lock()
	f.forwards = append(f.forwards, fw)
	f.mu.Unlock()
	return conn, fw, nil
}

// open creates the stream pair of one forwarded connection, in KCP's order: the error
// stream, closed at once (half-closed: the client never writes to it), then the data
// stream, both carrying the port and the requestID. KCP never reads the error stream;
// the probe does, only to explain a failure.
func (fw *forward) open(conn httpstream.Connection, port, requestID int) (httpstream.Stream, error) {
	headers := http.Header{}
	headers.Set(corev1.PortHeader, strconv.Itoa(port))
	headers.Set(corev1.PortForwardRequestIDHeader, strconv.Itoa(requestID))
	headers.Set(corev1.StreamType, corev1.StreamTypeError)
	errorStream, err := conn.CreateStream(headers)
	if err != nil {
		return nil, fmt.Errorf("creating the error stream: %w", err)
	}
	if err := errorStream.Close(); err != nil {
		return nil, fmt.Errorf("closing the error stream: %w", err)
	}
	fw.wait.Add(1)
	go func() {
		defer fw.wait.Done()
		message, _ := io.ReadAll(errorStream)
		if m := strings.TrimSpace(string(message)); m != "" {
			fw.mu.Lock()
			fw.Errors = append(fw.Errors, fmt.Sprintf("request %d: %s", requestID, m))
			fw.mu.Unlock()
		}
	}()
	headers.Set(corev1.StreamType, corev1.StreamTypeData)
	data, err := conn.CreateStream(headers)
	if err != nil {
		return nil, fmt.Errorf("creating the data stream: %w", err)
	}
	fw.mu.Lock()
	fw.Streams++
	fw.mu.Unlock()
	return data, nil
}

// dial is KCP's DialContext: one port-forward connection per dialed connection, one
// stream pair with requestID 0 on it. The address is the Pod's name, as gRPC hands
// over the etcd endpoint (KCP gives clientv3 "etcd-<node>" as its endpoint).
func (f *forwarder) dial(ctx context.Context, pod string) (net.Conn, error) {
	conn, fw, err := f.connect(ctx, pod)
	if err != nil {
		return nil, err
	}
	data, err := fw.open(conn, f.port, 0)
	if err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("port-forward to pod %s/%s: %w", f.namespace, pod, err)
	}
	return &streamConn{conn: conn, stream: data, ownsConn: true}, nil
}

// report returns the port-forward connections opened so far.
func (f *forwarder) report() []*forward {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*forward(nil), f.forwards...)
}

// explain adds what the kubelet end wrote on error streams to err, waiting a moment for
// streams that are still open.
func (f *forwarder) explain(err error) error {
	if f == nil || err == nil {
		return err
	}
	var msgs []string
	for _, fw := range f.report() {
		done := make(chan struct{})
		go func() { fw.wait.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(time.Second):
		}
		fw.mu.Lock()
		msgs = append(msgs, fw.Errors...)
		fw.mu.Unlock()
	}
	if len(msgs) == 0 {
		return err
	}
	return fmt.Errorf("%w; the kubelet end reported: %s", err, strings.Join(msgs, "; "))
}

// streamConn is a forwarded connection as a net.Conn. Like KCP's proxy.Conn it records
// deadlines without applying them: a fake kubelet must not count on a client timing a
// stream out.
type streamConn struct {
	conn     httpstream.Connection
	stream   httpstream.Stream
	ownsConn bool
}

func (c *streamConn) Read(b []byte) (int, error)  { return c.stream.Read(b) }
func (c *streamConn) Write(b []byte) (int, error) { return c.stream.Write(b) }

func (c *streamConn) Close() error {
	err := c.stream.Close()
	if c.ownsConn {
		if cerr := c.conn.Close(); err == nil {
			err = cerr
		}
	}
	return err
}

func (c *streamConn) LocalAddr() net.Addr  { return streamAddr{c.stream} }
func (c *streamConn) RemoteAddr() net.Addr { return streamAddr{c.stream} }

func (c *streamConn) SetDeadline(time.Time) error      { return nil }
func (c *streamConn) SetReadDeadline(time.Time) error  { return nil }
func (c *streamConn) SetWriteDeadline(time.Time) error { return nil }

// streamAddr names a stream as KCP's proxy.Addr does.
type streamAddr struct{ stream httpstream.Stream }

func (a streamAddr) Network() string { return portforward.PortForwardProtocolV1Name }
func (a streamAddr) String() string {
	return fmt.Sprintf("proxy://%d.%s.local:%s", a.stream.Identifier(),
		portforward.PortForwardProtocolV1Name, a.stream.Headers().Get(corev1.PortHeader))
}

// Plain TCP, for --endpoint.
func dialTCP(ctx context.Context, address string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", address)
}
