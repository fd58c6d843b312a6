// Package rpc wires Ferry's gRPC security and middleware: TLS 1.3 configs
// for both ends, and the server interceptor chain (Prometheus metrics, slog
// logging, authentication and per-RPC authorization from the caller's
// certificate, panic recovery), in the order go-grpc-middleware's own
// example uses; and the limits that hold before authentication: a Front
// routes connections without a client certificate to a server with small
// buffers and per-address rate limits.
package rpc

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/auth"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/ferrydeploy/ferry/shared/pki"
)

// Service name prefixes used by the default policy.
const (
	enrollmentPrefix = "/ferry.v1.EnrollmentService/"
	agentPrefix      = "/ferry.v1.AgentService/"
	replicaPrefix    = "/ferry.v1.ReplicaService/"
	clusterPrefix    = "/ferry.v1.ClusterService/"
)

// Access is what a method requires.
type Access struct {
	Public bool       // no client certificate needed (enrollment only)
	Roles  []pki.Role // roles allowed when not public
}

// Policy maps a full method name to its access rule.
type Policy func(fullMethod string) Access

// DefaultPolicy: enrollment is public, the agent service is for agents, the
// replica service (artifact blobs copied between controllers) and the
// cluster service (relay to the leader) for controllers, and everything
// else is for admins. Least privilege: an agent certificate can call
// nothing but its own service, an admin certificate nothing of the
// agent's or the controllers', and a controller certificate (which the CA
// issues only to controllers, for serving and as their client certificate
// towards each other) nothing but the replica and cluster services.
func DefaultPolicy(fullMethod string) Access {
	switch {
	case strings.HasPrefix(fullMethod, enrollmentPrefix):
		return Access{Public: true}
	case strings.HasPrefix(fullMethod, agentPrefix):
		return Access{Roles: []pki.Role{pki.RoleAgent}}
	case strings.HasPrefix(fullMethod, replicaPrefix), strings.HasPrefix(fullMethod, clusterPrefix):
		return Access{Roles: []pki.Role{pki.RoleController}}
	default:
		return Access{Roles: []pki.Role{pki.RoleAdmin}}
	}
}

// IdentityChecker refuses identities that are no longer allowed (removed
// nodes, revoked admins) even though their certificate still verifies.
type IdentityChecker func(ctx context.Context, id pki.Identity, cert *x509.Certificate) error

type identityKey struct{}

// Caller is the authenticated caller of an RPC.
type Caller struct {
	Identity pki.Identity
	Cert     *x509.Certificate
	Addr     string
}

// CallerFrom returns the authenticated caller; ok is false for public RPCs
// called without a certificate.
func CallerFrom(ctx context.Context) (Caller, bool) {
	c, ok := ctx.Value(identityKey{}).(Caller)
	return c, ok
}

// CallerName is the caller's identity as the audit log names it
// ("admin/alice"), or "unknown" when the RPC had no certificate.
func CallerName(ctx context.Context) string {
	if c, ok := CallerFrom(ctx); ok {
		return c.Identity.String()
	}
	return "unknown"
}

// WithCaller returns a context carrying a caller, for tests of handlers.
func WithCaller(ctx context.Context, c Caller) context.Context {
	return context.WithValue(ctx, identityKey{}, c)
}

// Authenticate returns the go-grpc-middleware auth function for a policy.
func Authenticate(policy Policy, check IdentityChecker) auth.AuthFunc {
	return func(ctx context.Context) (context.Context, error) {
		method, _ := grpc.Method(ctx)
		access := policy(method)
		p, _ := peer.FromContext(ctx)
		var cert *x509.Certificate
		addr := ""
		if p != nil {
			addr = p.Addr.String()
			if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.VerifiedChains) > 0 && len(ti.State.PeerCertificates) > 0 {
				cert = ti.State.PeerCertificates[0]
			}
		}
		if cert == nil {
			if access.Public {
				return ctx, nil
			}
			return nil, errNeedsCertificate(method)
		}
		id, err := pki.ParseIdentity(cert)
		if err != nil {
			return nil, status.Errorf(codes.Unauthenticated, "client certificate: %v", err)
		}
		if !access.Public && !slices.Contains(access.Roles, id.Role) {
			return nil, status.Errorf(codes.PermissionDenied, "%s is not allowed for %s (role %s); it needs role %s", method, id, id.Role, rolesString(access.Roles))
		}
		if check != nil {
			if err := check(ctx, id, cert); err != nil {
				if _, ok := status.FromError(err); ok {
					return nil, err
				}
				return nil, status.Error(codes.PermissionDenied, err.Error())
			}
		}
		return context.WithValue(ctx, identityKey{}, Caller{Identity: id, Cert: cert, Addr: addr}), nil
	}
}

func errNeedsCertificate(method string) error {
	return status.Errorf(codes.Unauthenticated, "%s requires a client certificate signed by the Ferry CA; use the credential written by the controller (ferryctl --config) or enroll the agent first", method)
}

func rolesString(rs []pki.Role) string {
	s := make([]string, len(rs))
	for i, r := range rs {
		s[i] = string(r)
	}
	return strings.Join(s, " or ")
}

// slogAdapter is the five-line adapter from go-grpc-middleware logging to slog.
func slogAdapter(l *slog.Logger) logging.Logger {
	return logging.LoggerFunc(func(ctx context.Context, lvl logging.Level, msg string, fields ...any) {
		l.Log(ctx, slog.Level(lvl), msg, fields...)
	})
}

// ServerOptions are the options every Ferry gRPC server uses.
type ServerOptions struct {
	TLS     *tls.Config
	Logger  *slog.Logger
	Metrics *Interceptors   // nil: no metrics
	Policy  Policy          // nil: DefaultPolicy
	Check   IdentityChecker // nil: no extra check
	Limits  Limits          // zero fields: DefaultLimits
}

// Interceptors are a server's unary and stream interceptors for one
// concern, such as those of go-grpc-middleware's Prometheus ServerMetrics.
// Taking interceptors rather than that type keeps Prometheus out of this
// package's clients, such as ferryctl.
type Interceptors struct {
	Unary  grpc.UnaryServerInterceptor
	Stream grpc.StreamServerInterceptor
}

// NewServer builds the gRPC server for authenticated peers: TLS, the
// interceptor chain and the limits of every connection. Serve it on a
// Front, which keeps peers without a client certificate away from it;
// served on a plain listener (as tests do) it makes its own TLS handshakes
// and serves every peer.
func NewServer(o ServerOptions) *grpc.Server {
	o = o.withDefaults()
	return grpc.NewServer(append(o.baseOptions(),
		grpc.MaxRecvMsgSize(maxRecvMsgSize),
		grpc.MaxConcurrentStreams(o.Limits.MaxStreams),
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: apiMaxIdle, Time: keepaliveTime, Timeout: keepaliveTimeout}),
	)...)
}

// withDefaults fills in what the options' zero values stand for.
func (o ServerOptions) withDefaults() ServerOptions {
	if o.Policy == nil {
		o.Policy = DefaultPolicy
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	o.Limits = o.Limits.withDefaults()
	return o
}

// baseOptions are what every Ferry gRPC server has: credentials, the
// interceptor chain (a default deadline first), keepalive enforcement and
// the handshake timeout. o has its defaults.
func (o ServerOptions) baseOptions() []grpc.ServerOption {
	logger := o.Logger
	authFn := Authenticate(o.Policy, o.Check)
	recoverFn := recovery.WithRecoveryHandler(func(p any) error {
		logger.Error("panic in RPC handler", "panic", p, "stack", string(debug.Stack()))
		return status.Error(codes.Internal, "internal error; see the controller log")
	})
	logOpts := []logging.Option{logging.WithLogOnEvents(logging.FinishCall)}
	unary := []grpc.UnaryServerInterceptor{unaryDeadline(o.Limits.UnaryTimeout)}
	var stream []grpc.StreamServerInterceptor
	if o.Metrics != nil {
		unary = append(unary, o.Metrics.Unary)
		stream = append(stream, o.Metrics.Stream)
	}
	unary = append(unary,
		logging.UnaryServerInterceptor(slogAdapter(logger), logOpts...),
		auth.UnaryServerInterceptor(authFn),
		recovery.UnaryServerInterceptor(recoverFn))
	stream = append(stream,
		logging.StreamServerInterceptor(slogAdapter(logger), logOpts...),
		auth.StreamServerInterceptor(authFn),
		recovery.StreamServerInterceptor(recoverFn))
	return []grpc.ServerOption{
		grpc.Creds(frontCreds{credentials.NewTLS(o.TLS)}),
		grpc.ChainUnaryInterceptor(unary...),
		grpc.ChainStreamInterceptor(stream...),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: keepaliveMinTime, PermitWithoutStream: true}),
		grpc.ConnectionTimeout(o.Limits.HandshakeTimeout),
		// Stop waits for running handlers, so the store is not closed under them.
		grpc.WaitForHandlers(true),
	}
}

// ServerTLS is the controller's TLS config: TLS 1.3 only, client
// certificates verified against the CA when given (the auth interceptor
// requires them on every RPC but enrollment).
func ServerTLS(getCert func(*tls.ClientHelloInfo) (*tls.Certificate, error), clientCAs *x509.CertPool) *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		GetCertificate: getCert,
		ClientAuth:     tls.VerifyClientCertIfGiven,
		ClientCAs:      clientCAs,
	}
}

// ClientTLS is the TLS config agents and ferryctl use: TLS 1.3, the CA as
// the only root, and the peer must be the controller identity.
func ClientTLS(getCert func(*tls.CertificateRequestInfo) (*tls.Certificate, error), roots *x509.CertPool) *tls.Config {
	return &tls.Config{
		MinVersion:           tls.VersionTLS13,
		RootCAs:              roots,
		ServerName:           pki.ControllerServerName,
		GetClientCertificate: getCert,
		VerifyConnection:     verifyController,
	}
}

func verifyController(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("controller presented no certificate")
	}
	id, err := pki.ParseIdentity(cs.PeerCertificates[0])
	if err != nil {
		return fmt.Errorf("controller certificate: %w", err)
	}
	if id.Role != pki.RoleController {
		return fmt.Errorf("peer is %s, not the Ferry controller", id)
	}
	return nil
}

// PinnedTLS is for first contact (enrollment): the client has no CA yet,
// only its pin. The chain the controller presents must contain a CA with
// that pin which signed the leaf, and the leaf must be the controller.
// onCA receives the verified CA certificate.
func PinnedTLS(pin string, onCA func(*x509.Certificate)) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true, //nolint:gosec // G402: VerifyConnection below checks the chain against the pinned CA instead.
		ServerName:         pki.ControllerServerName,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) < 2 {
				return errors.New("controller did not present its CA certificate; is this a Ferry controller?")
			}
			leaf := cs.PeerCertificates[0]
			var lastErr error
			for _, ca := range cs.PeerCertificates[1:] {
				if err := pki.CheckPin(pin, ca); err != nil {
					lastErr = err
					continue
				}
				pool := x509.NewCertPool()
				pool.AddCert(ca)
				if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: pki.ControllerServerName, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
					return fmt.Errorf("controller certificate does not verify against the pinned CA: %w", err)
				}
				if err := verifyController(cs); err != nil {
					return err
				}
				if onCA != nil {
					onCA(ca)
				}
				return nil
			}
			return lastErr
		},
	}
}

// DialOptions are the client options for talking to the controller.
func DialOptions(tlsConf *tls.Config) []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithTransportCredentials(credentials.NewTLS(tlsConf)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second, PermitWithoutStream: true}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(8 << 20)),
	}
}
