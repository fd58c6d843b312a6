package rpc

import (
	"cmp"
	"context"
	"time"

	"google.golang.org/grpc"

	"github.com/ferrydeploy/ferry/shared/rpc/ratelimit"
)

// Limits bound what a peer can hold or ask of the controller, most tightly
// before it has shown a client certificate. A zero field takes its value
// from DefaultLimits. docs/security.md explains each to operators.
type Limits struct {
	// Every connection.
	MaxStreams       uint32        // concurrent streams per authenticated connection
	UnaryTimeout     time.Duration // deadline of unary calls that set none (public calls: including reading the request)
	HandshakeTimeout time.Duration // TLS and HTTP/2 handshakes together
	// MaxHandshakes bounds TLS handshakes in progress from everyone
	// together; per peer address they are bounded by PublicConnsPerPeer.
	// Past either, a new connection is closed at once.
	MaxHandshakes int

	// Connections without a client certificate (enrollment).
	PublicMaxRecvMsgSize int            // largest request message, bytes
	PublicMaxStreams     uint32         // concurrent streams per connection
	PublicConns          int            // open connections in all (per-address limits do not stop many addresses)
	PublicConnsPerPeer   int            // open connections per peer address
	PublicConnRate       ratelimit.Rate // new connections per peer address
	PublicCallRate       ratelimit.Rate // calls per peer address
	// LimitLoopback applies the per-address limits to peers on loopback
	// too. Off by default: those are processes on the controller's own host
	// (tests and benchmarks that simulate a fleet from one address).
	LimitLoopback bool
}

// DefaultLimits are the limits a zero Limits field stands for.
var DefaultLimits = Limits{
	MaxStreams:           100,
	UnaryTimeout:         30 * time.Second,
	HandshakeTimeout:     10 * time.Second,
	MaxHandshakes:        4096,
	PublicMaxRecvMsgSize: 16 << 10,
	PublicMaxStreams:     4,
	PublicConns:          1024,
	PublicConnsPerPeer:   32,
	PublicConnRate:       ratelimit.Rate{PerSecond: 10, Burst: 100},
	PublicCallRate:       ratelimit.Rate{PerSecond: 10, Burst: 100},
}

// Fixed limits, sized to the protocol rather than to a deployment.
const (
	// maxRecvMsgSize bounds a message from an authenticated peer.
	maxRecvMsgSize = 8 << 20
	// publicWindow is the HTTP/2 flow-control window of connections without
	// a certificate, per stream and per connection: what a stream can make
	// the transport buffer before its request is read. 64 KiB is grpc-go's
	// floor; a fixed window also turns off its BDP growth.
	publicWindow = 64 << 10
	// publicMaxHeaderList bounds a public call's headers (a real client
	// sends a few hundred bytes; grpc-go's default is 16 MiB).
	publicMaxHeaderList = 8 << 10
	// Keepalive: a peer that stops answering is dropped within
	// keepaliveTime+keepaliveTimeout of its last frame.
	keepaliveTime    = 10 * time.Second
	keepaliveTimeout = 5 * time.Second
	// keepaliveMinTime is the client ping interval the server tolerates
	// (clients ping every 30 s, see DialOptions).
	keepaliveMinTime = 10 * time.Second
	// apiMaxIdle closes authenticated connections without a call for this
	// long (an agent always has its stream open).
	apiMaxIdle = 5 * time.Minute
	// A public connection serves one enrollment: it is closed when idle
	// for publicMaxIdle, and in any case after publicMaxAge plus
	// publicMaxAgeGrace for the calls in flight.
	publicMaxIdle     = 30 * time.Second
	publicMaxAge      = 2 * time.Minute
	publicMaxAgeGrace = 30 * time.Second
	// Connections over a per-address limit are told so with a status and
	// closed after refusalLinger; at most maxRefusals at once, beyond that
	// they are closed without a word.
	refusalLinger = 2 * time.Second
	maxRefusals   = 64
)

func (l Limits) withDefaults() Limits {
	d := DefaultLimits
	return Limits{
		MaxStreams:           cmp.Or(l.MaxStreams, d.MaxStreams),
		UnaryTimeout:         cmp.Or(l.UnaryTimeout, d.UnaryTimeout),
		HandshakeTimeout:     cmp.Or(l.HandshakeTimeout, d.HandshakeTimeout),
		MaxHandshakes:        cmp.Or(l.MaxHandshakes, d.MaxHandshakes),
		PublicMaxRecvMsgSize: cmp.Or(l.PublicMaxRecvMsgSize, d.PublicMaxRecvMsgSize),
		PublicMaxStreams:     cmp.Or(l.PublicMaxStreams, d.PublicMaxStreams),
		PublicConns:          cmp.Or(l.PublicConns, d.PublicConns),
		PublicConnsPerPeer:   cmp.Or(l.PublicConnsPerPeer, d.PublicConnsPerPeer),
		PublicConnRate:       cmp.Or(l.PublicConnRate, d.PublicConnRate),
		PublicCallRate:       cmp.Or(l.PublicCallRate, d.PublicCallRate),
		LimitLoopback:        l.LimitLoopback,
	}
}

// unaryDeadline gives unary calls that came without a deadline a default
// one, so no handler waits forever on a client that went away.
func unaryDeadline(d time.Duration) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if _, ok := ctx.Deadline(); !ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, d)
			defer cancel()
		}
		return handler(ctx, req)
	}
}
