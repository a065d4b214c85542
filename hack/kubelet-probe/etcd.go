package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"
)

// KCP's default --etcd-dial-timeout-duration.
const kcpEtcdDialTimeout = 10 * time.Second

// Member IDs, cluster IDs and the leader are hexadecimal strings, as etcdctl and KCP's
// messages print them (JSON numbers lose uint64 precision in many readers).
type hexID uint64

func (id hexID) MarshalText() ([]byte, error) { return []byte(strconv.FormatUint(uint64(id), 16)), nil }

func parseID(s string) (uint64, error) {
	id, err := strconv.ParseUint(strings.TrimPrefix(strings.ToLower(s), "0x"), 16, 64)
	if err != nil {
		return 0, fmt.Errorf("member id %q is not hexadecimal: %w", s, err)
	}
	return id, nil
}

type header struct {
	ClusterID hexID  `json:"clusterId"`
	MemberID  hexID  `json:"memberId"`
	Revision  int64  `json:"revision"`
	RaftTerm  uint64 `json:"raftTerm"`
}

func headerOf(h *etcdserverpb.ResponseHeader) header {
	return header{hexID(h.GetClusterId()), hexID(h.GetMemberId()), h.GetRevision(), h.GetRaftTerm()}
}

type member struct {
	ID         hexID    `json:"id"`
	Name       string   `json:"name"`
	PeerURLs   []string `json:"peerURLs"`
	ClientURLs []string `json:"clientURLs"`
	IsLearner  bool     `json:"isLearner"`
}

func membersOf(ms []*etcdserverpb.Member) []member {
	out := make([]member, 0, len(ms))
	for _, m := range ms {
		out = append(out, member{hexID(m.GetID()), m.GetName(), nonNil(m.GetPeerURLs()),
			nonNil(m.GetClientURLs()), m.GetIsLearner()})
	}
	return out
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

type etcdResult struct {
	Op       string `json:"op"`
	Endpoint string `json:"endpoint"`
	Header   header `json:"header"`
	// member-list, member-remove (the members left).
	Members []member `json:"members,omitempty"`
	// status: the leader; move-leader: the new leader asked for.
	Leader *hexID `json:"leader,omitempty"`
	// status.
	Version   string    `json:"version,omitempty"`
	DBSize    int64     `json:"dbSize,omitempty"`
	RaftIndex uint64    `json:"raftIndex,omitempty"`
	Errors    *[]string `json:"errors,omitempty"`
	IsLearner *bool     `json:"isLearner,omitempty"`
	// alarm-list.
	Alarms *[]alarm `json:"alarms,omitempty"`
	// member-remove.
	Removed *hexID `json:"removed,omitempty"`
	// The connections the client dialed: clientv3 dials one for Status, apart from its
	// main one.
	Dials        int        `json:"dials"`
	PortForwards []*forward `json:"portForwards,omitempty"`
}

type alarm struct {
	MemberID hexID  `json:"memberId"`
	Alarm    string `json:"alarm"`
}

func runEtcd(ctx context.Context, t *target, args []string) (any, error) {
	if len(args) == 0 {
		return nil, errors.New("an op is required: member-list, status, alarm-list, member-remove <id>, move-leader <id>")
	}
	op := args[0]
	var id uint64
	switch op {
	case "member-list", "status", "alarm-list":
		if len(args) != 1 {
			return nil, fmt.Errorf("%s takes no argument", op)
		}
	case "member-remove", "move-leader":
		if len(args) != 2 {
			return nil, fmt.Errorf("%s takes one member id (hexadecimal)", op)
		}
		var err error
		if id, err = parseID(args[1]); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("unknown op %q", op)
	}
	tlsConfig, err := kcpTLSConfig()
	if err != nil {
		return nil, err
	}

	// KCP hands clientv3 the Pod's name as its only endpoint: clientv3 passes it to the
	// dialer as the address, and gRPC uses it as the TLS server name (SNI) and the
	// :authority. Direct mode uses host:port instead.
	endpoint := t.endpoint
	var fwd *forwarder
	var mu sync.Mutex
	dials := 0
	dial := func(ctx context.Context, address string) (net.Conn, error) {
		mu.Lock()
		dials++
		mu.Unlock()
		if fwd != nil {
			return fwd.dial(ctx, address)
		}
		return dialTCP(ctx, address)
	}
	if endpoint == "" {
		endpoint = t.pod
		if fwd, err = newForwarder(t); err != nil {
			return nil, err
		}
	}

	// clientv3 retries a failed call until the deadline and then reports only that; the
	// cause (a refused certificate, a missing ALPN) is in what it logs on the way.
	last := &lastError{LevelEnabler: zapcore.WarnLevel}
	failed := func(what string, err error) error {
		err = fmt.Errorf("%s: %w", what, err)
		if m := last.get(); m != "" && !strings.Contains(err.Error(), m) {
			err = fmt.Errorf("%w (last gRPC error: %s)", err, m)
		}
		return fwd.explain(err)
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{endpoint},
		DialTimeout: min(kcpEtcdDialTimeout, time.Until(deadlineOf(ctx))),
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(dial)},
		TLS:         tlsConfig,
		Logger:      zap.New(last),
	})
	if err != nil {
		return nil, failed("creating the etcd client", err)
	}
	defer cli.Close()

	// KCP's etcd.NewClient calls Status first, every time, and keeps its leader and
	// errors; clientv3 dials a connection of its own for it.
	status, err := cli.Status(ctx, endpoint)
	if err != nil {
		return nil, failed("etcd status", err)
	}
	out := &etcdResult{Op: op, Endpoint: endpoint}
	switch op {
	case "status":
		out.Header = headerOf(status.Header)
		leader := hexID(status.Leader)
		errs := nonNil(status.Errors)
		out.Leader, out.Version, out.DBSize, out.RaftIndex = &leader, status.Version, status.DbSize, status.RaftIndex
		out.Errors, out.IsLearner = &errs, &status.IsLearner
	case "member-list":
		resp, err := cli.MemberList(ctx)
		if err != nil {
			return nil, failed("etcd member list", err)
		}
		out.Header, out.Members = headerOf(resp.Header), membersOf(resp.Members)
	case "alarm-list":
		resp, err := cli.AlarmList(ctx)
		if err != nil {
			return nil, failed("etcd alarm list", err)
		}
		alarms := make([]alarm, 0, len(resp.Alarms))
		for _, a := range resp.Alarms {
			alarms = append(alarms, alarm{hexID(a.GetMemberID()), a.GetAlarm().String()})
		}
		out.Header, out.Alarms = headerOf(resp.Header), &alarms
	case "member-remove":
		resp, err := cli.MemberRemove(ctx, id)
		if err != nil {
			return nil, failed(fmt.Sprintf("etcd member remove %x", id), err)
		}
		removed := hexID(id)
		out.Header, out.Members, out.Removed = headerOf(resp.Header), membersOf(resp.Members), &removed
	case "move-leader":
		resp, err := cli.MoveLeader(ctx, id)
		if err != nil {
			return nil, failed(fmt.Sprintf("etcd move leader to %x", id), err)
		}
		leader := hexID(id)
		out.Header, out.Leader = headerOf(resp.Header), &leader
	}
	mu.Lock()
	out.Dials = dials
	mu.Unlock()
	if fwd != nil {
		out.PortForwards = fwd.report()
	}
	return out, nil
}

// kcpTLSConfig is the client TLS configuration KCP builds for a workload cluster's etcd
// (controlplane/kubeadm/internal/cluster.go): the etcd CA as root, a client
// certificate, TLS 1.2 at least, and InsecureSkipVerify, so the server's certificate is
// presented but not checked. gRPC adds ALPN h2 and insists on it.
func kcpTLSConfig() (*tls.Config, error) {
	if tlsFiles.ca == "" || tlsFiles.cert == "" || tlsFiles.key == "" {
		return nil, errors.New("--ca, --cert and --key are required")
	}
	caPEM, err := os.ReadFile(tlsFiles.ca)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("%s holds no PEM certificate", tlsFiles.ca)
	}
	cert, err := tls.LoadX509KeyPair(tlsFiles.cert, tlsFiles.key)
	if err != nil {
		return nil, fmt.Errorf("loading the client certificate: %w", err)
	}
	return &tls.Config{
		RootCAs:            pool,
		Certificates:       []tls.Certificate{cert},
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, //nolint:gosec // As KCP does.
	}, nil
}

func deadlineOf(ctx context.Context) time.Time {
	if d, ok := ctx.Deadline(); ok {
		return d
	}
	return time.Now().Add(time.Hour)
}

// lastError is a zap core that keeps the error of the last warning clientv3 logged.
type lastError struct {
	zapcore.LevelEnabler
	mu  sync.Mutex
	msg string
}

func (l *lastError) With([]zapcore.Field) zapcore.Core { return l }
func (l *lastError) Sync() error                       { return nil }

func (l *lastError) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if l.Enabled(e.Level) {
		return ce.AddCore(e, l)
	}
	return ce
}

func (l *lastError) Write(_ zapcore.Entry, fields []zapcore.Field) error {
	for _, f := range fields {
		if err, ok := f.Interface.(error); ok && f.Type == zapcore.ErrorType {
			l.mu.Lock()
			l.msg = err.Error()
			l.mu.Unlock()
		}
	}
	return nil
}

func (l *lastError) get() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.msg
}
