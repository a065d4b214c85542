package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

type echoResult struct {
	Connections        int     `json:"connections"`
	BytesPerConnection int     `json:"bytesPerConnection"`
	BytesSent          int64   `json:"bytesSent"`
	BytesReceived      int64   `json:"bytesReceived"`
	Seconds            float64 `json:"seconds"`
	// Through the forward: the one port-forward connection and its stream count.
	PortForwards []*forward `json:"portForwards,omitempty"`
}

// runForwardEcho opens --connections forwarded connections on ONE port-forward
// connection (requestIDs 0..C-1, as kubectl port-forward numbers them), sends --bytes on
// each while reading them back from an echo server behind, and checks every byte. KCP
// never multiplexes; this proves the kubelet end does, and carries volume.
func runForwardEcho(ctx context.Context, t *target, args []string) (any, error) {
	if len(args) != 0 {
		return nil, fmt.Errorf("unexpected arguments %q", args)
	}
	if echo.connections < 1 || echo.bytes < 0 {
		return nil, errors.New("--connections must be at least 1 and --bytes not negative")
	}
	var fwd *forwarder
	var open func(i int) (net.Conn, error)
	if t.endpoint != "" {
		open = func(int) (net.Conn, error) { return dialTCP(ctx, t.endpoint) }
	} else {
		var err error
		if fwd, err = newForwarder(t); err != nil {
			return nil, err
		}
		conn, fw, err := fwd.connect(ctx, t.pod)
		if err != nil {
			return nil, err
		}
		defer conn.Close()
		open = func(i int) (net.Conn, error) {
			data, err := fw.open(conn, t.port, i)
			if err != nil {
				return nil, err
			}
			return &streamConn{conn: conn, stream: data}, nil
		}
	}

	start := time.Now()
	errs := make(chan error, echo.connections)
	received := make(chan int64, echo.connections)
	for i := range echo.connections {
		c, err := open(i)
		if err != nil {
			return nil, fwd.explain(fmt.Errorf("connection %d: %w", i, err))
		}
		go func() {
			n, err := echoOnce(c, i, echo.bytes)
			received <- n
			errs <- err
		}()
	}
	out := &echoResult{Connections: echo.connections, BytesPerConnection: echo.bytes}
	var failures []error
	for range echo.connections {
		out.BytesReceived += <-received
		if err := <-errs; err != nil {
			failures = append(failures, err)
		}
	}
	out.Seconds = time.Since(start).Seconds()
	out.BytesSent = int64(echo.connections) * int64(echo.bytes)
	if err := errors.Join(failures...); err != nil {
		return nil, fwd.explain(err)
	}
	if fwd != nil {
		out.PortForwards = fwd.report()
	}
	return out, nil
}

// echoOnce writes n patterned bytes while reading n back (concurrently, so neither side
// stalls on a full window), compares, and closes.
func echoOnce(c net.Conn, seed, n int) (int64, error) {
	defer c.Close()
	sent := make([]byte, n)
	for i := range sent {
		// Differs between connections, so a stream crossed with another is caught.
		sent[i] = byte(i*7 + seed*13 + i>>8)
	}
	writeErr := make(chan error, 1)
	go func() {
		_, err := c.Write(sent)
		writeErr <- err
	}()
	got := make([]byte, n)
	read, err := io.ReadFull(c, got)
	if werr := <-writeErr; werr != nil {
		return int64(read), fmt.Errorf("connection %d: writing: %w", seed, werr)
	}
	if err != nil {
		return int64(read), fmt.Errorf("connection %d: read %d of %d bytes: %w", seed, read, n, err)
	}
	if i := firstDifference(sent, got); i >= 0 {
		return int64(read), fmt.Errorf("connection %d: byte %d differs from what was sent", seed, i)
	}
	return int64(read), nil
}

func firstDifference(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return len(a)
}
