// Package etcdclient builds the one etcd v3 client a controller uses for its
// store and for leader election: endpoints, TLS from the files the operator
// names, dial timeout and keepalive in one place, so every user of etcd in the
// controller connects the same way.
package etcdclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// DefaultPrefix is the key prefix under which a controller keeps everything in
// etcd when the operator names none.
const DefaultPrefix = "/ferry"

// DialTimeout bounds how long New waits for the first connection.
const DialTimeout = 5 * time.Second

// Config names an etcd cluster and how to reach it.
type Config struct {
	// Endpoints are the client URLs of the etcd members (https://host:2379).
	Endpoints []string
	// CA, Cert and Key are PEM file paths; CA alone verifies the server,
	// Cert and Key together authenticate the controller (client TLS).
	CA, Cert, Key string
	// Prefix is the key prefix everything lives under; DefaultPrefix if empty.
	Prefix string
}

// KeyPrefix is c.Prefix normalized: DefaultPrefix when empty, one leading
// slash, no trailing slash.
func (c Config) KeyPrefix() string {
	p := strings.TrimRight(strings.TrimSpace(c.Prefix), "/")
	if p == "" {
		p = strings.TrimRight(DefaultPrefix, "/")
	}
	if !strings.HasPrefix(p, "/") {
		p = "/" + p
	}
	return p
}

// Validate reports a Config an operator must fix before anything connects.
func (c Config) Validate() error {
	if len(c.Endpoints) == 0 {
		return errors.New("etcd: no endpoints; set --etcd-endpoints (or etcd-endpoints in the config file) to host:2379[,host:2379...]")
	}
	for _, e := range c.Endpoints {
		if strings.TrimSpace(e) == "" {
			return fmt.Errorf("etcd: empty endpoint in %q", strings.Join(c.Endpoints, ","))
		}
	}
	if (c.Cert == "") != (c.Key == "") {
		return errors.New("etcd: --etcd-cert and --etcd-key go together; set both or neither")
	}
	return nil
}

// TLS is the client TLS configuration from the CA, Cert and Key files, or nil
// when none is set (plain connections, for loopback tests only).
func (c Config) TLS() (*tls.Config, error) {
	if c.CA == "" && c.Cert == "" && c.Key == "" {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.CA != "" {
		pem, err := os.ReadFile(c.CA)
		if err != nil {
			return nil, fmt.Errorf("etcd CA %s: %w", c.CA, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("etcd CA %s: no PEM certificate in it", c.CA)
		}
		cfg.RootCAs = pool
	}
	if c.Cert != "" {
		pair, err := tls.LoadX509KeyPair(c.Cert, c.Key)
		if err != nil {
			return nil, fmt.Errorf("etcd client certificate %s / key %s: %w", c.Cert, c.Key, err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

// New connects to the etcd cluster c names and checks that it answers
// within DialTimeout (bounded further by ctx). The caller closes the client.
func New(ctx context.Context, c Config) (*clientv3.Client, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	tlsCfg, err := c.TLS()
	if err != nil {
		return nil, err
	}
	eps := make([]string, len(c.Endpoints))
	for i, e := range c.Endpoints {
		eps[i] = strings.TrimSpace(e)
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            eps,
		TLS:                  tlsCfg,
		DialTimeout:          DialTimeout,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		PermitWithoutStream:  true,
		AutoSyncInterval:     0,
		Context:              context.WithoutCancel(ctx),
		Logger:               zap.NewNop(),
	})
	if err != nil {
		return nil, Unreachable(eps, err)
	}
	pctx, cancel := context.WithTimeout(ctx, DialTimeout)
	defer cancel()
	// A cheap linearizable read proves the cluster has a leader and that
	// TLS and auth work, so a wrong endpoint fails here and not at the
	// first write.
	if _, err := cli.Get(pctx, c.KeyPrefix()+"/", clientv3.WithCountOnly(), clientv3.WithLimit(1)); err != nil {
		_ = cli.Close()
		return nil, Unreachable(eps, err)
	}
	return cli, nil
}

// UnreachableError says that etcd did not answer; its message is meant for an
// operator.
type UnreachableError struct {
	Endpoints []string
	Err       error
}

func (e *UnreachableError) Error() string {
	cause := e.Err.Error()
	if errors.Is(e.Err, context.DeadlineExceeded) {
		cause = "no answer within " + DialTimeout.String()
	}
	return fmt.Sprintf("etcd at %s unreachable: %s; the controller refuses writes until it is back", strings.Join(e.Endpoints, ","), cause)
}

func (e *UnreachableError) Unwrap() error { return e.Err }

// IsUnreachable reports whether err from an etcd call means etcd did not
// answer (no leader, a timeout, the connection down), as opposed to a refusal
// of the request itself. It reads the client's gRPC codes here, so the
// store's domain code needs none.
func IsUnreachable(err error) bool {
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled),
		errors.Is(err, rpctypes.ErrNoLeader), errors.Is(err, rpctypes.ErrTimeout):
		return true
	}
	c := status.Code(err)
	return c == codes.Unavailable || c == codes.DeadlineExceeded
}

// Unreachable wraps err from talking to endpoints as an *UnreachableError.
func Unreachable(endpoints []string, err error) error {
	return &UnreachableError{Endpoints: endpoints, Err: err}
}
