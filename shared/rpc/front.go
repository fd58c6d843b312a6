package rpc

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"

	"github.com/ferrydeploy/ferry/shared/rpc/ratelimit"
)

// A Front is the controller's gRPC listener. It completes the TLS handshake
// itself and routes each connection by what the client presented:
//
//   - a verified client certificate: Accept returns the connection to the
//     server serving the Front (NewServer's: the whole API);
//   - none: the connection goes to a public server the Front owns, which
//     serves only what is registered on the Front (enrollment), with a
//     small message limit and flow-control window, few streams, a deadline
//     that covers reading the request, and per-address rate limits;
//   - none, over a limit (per address, or on all such connections): every
//     call is answered with ResourceExhausted, then the connection is
//     closed.
//
// So a peer without a certificate never reaches the API server, whose
// limits suit authenticated peers (8 MiB messages, windows that grow with
// the link). Close stops the public server too.
type Front struct {
	lis    net.Listener
	tls    *tls.Config
	limits Limits
	policy Policy
	log    *slog.Logger

	public  *grpc.Server // peers without a certificate
	refusal *grpc.Server // peers over a limit
	api     chan net.Conn
	pub     chan net.Conn
	refused chan net.Conn

	conns    *ratelimit.Limiter // new public connections per peer address
	calls    *ratelimit.Limiter // public calls per peer address
	logs     *ratelimit.Limiter // refusal log lines per peer address
	refusing chan struct{}      // a slot per refused connection still open

	mu      sync.Mutex
	open    map[string]int // open public connections per peer address
	openAll int            // open public connections in all
	// TLS handshakes in progress, per peer address and in all: a peer that
	// opens connections and never finishes the handshake holds a goroutine
	// and a file descriptor each until HandshakeTimeout, so their number is
	// capped before the handshake starts.
	shaking    map[string]int
	shakingAll int

	ctx        context.Context // ends with Close
	cancel     context.CancelFunc
	start      sync.Once
	wg         sync.WaitGroup
	acceptDone chan struct{}
	acceptErr  error // why the accept loop ended; set before acceptDone closes
	closeOnce  sync.Once
	closeErr   error
}

// NewFront returns a Front on lis. o.TLS is the server's TLS config
// (ServerTLS); o.Limits the limits; the rest configure the public server as
// NewServer's.
func NewFront(lis net.Listener, o ServerOptions) *Front {
	o = o.withDefaults()
	l := o.Limits
	conf := o.TLS.Clone()
	conf.NextProtos = []string{"h2"}
	f := &Front{
		lis: lis, tls: conf, limits: l, policy: o.Policy, log: o.Logger,
		api: make(chan net.Conn), pub: make(chan net.Conn), refused: make(chan net.Conn),
		conns:      ratelimit.New(l.PublicConnRate, nil),
		calls:      ratelimit.New(l.PublicCallRate, nil),
		logs:       ratelimit.New(ratelimit.Rate{PerSecond: 1.0 / 60, Burst: 1}, nil),
		refusing:   make(chan struct{}, maxRefusals),
		open:       map[string]int{},
		shaking:    map[string]int{},
		acceptDone: make(chan struct{}),
	}
	f.ctx, f.cancel = context.WithCancel(context.Background())
	small := []grpc.ServerOption{
		grpc.InitialWindowSize(publicWindow),
		grpc.InitialConnWindowSize(publicWindow),
		grpc.MaxHeaderListSize(publicMaxHeaderList),
	}
	f.public = grpc.NewServer(append(append(o.baseOptions(), small...),
		grpc.MaxRecvMsgSize(l.PublicMaxRecvMsgSize),
		grpc.MaxConcurrentStreams(l.PublicMaxStreams),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			MaxConnectionIdle: publicMaxIdle, MaxConnectionAge: publicMaxAge, MaxConnectionAgeGrace: publicMaxAgeGrace,
			Time: keepaliveTime, Timeout: keepaliveTimeout,
		}),
		grpc.InTapHandle(f.tap),
	)...)
	// No interceptors: a refused peer's calls are neither logged one by one
	// nor counted under the method names it chose.
	f.refusal = grpc.NewServer(append(small,
		grpc.Creds(frontCreds{credentials.NewTLS(conf)}),
		grpc.MaxConcurrentStreams(1),
		grpc.ConnectionTimeout(refusalLinger),
		grpc.UnknownServiceHandler(f.refuse),
	)...)
	return f
}

// RegisterService registers a public service (grpc.ServiceRegistrar):
// what peers without a client certificate may call.
func (f *Front) RegisterService(desc *grpc.ServiceDesc, impl any) {
	f.public.RegisterService(desc, impl)
}

// Accept returns the next connection that presented a verified client
// certificate. The first call starts the Front.
func (f *Front) Accept() (net.Conn, error) {
	f.start.Do(f.serve)
	select {
	case c := <-f.api:
		return c, nil
	case <-f.ctx.Done():
		return nil, net.ErrClosed
	case <-f.acceptDone:
		return nil, f.acceptErr
	}
}

// Addr is the listening address.
func (f *Front) Addr() net.Addr { return f.lis.Addr() }

// Close stops listening, lets the public calls in flight finish (for a few
// seconds at most) and closes the public connections. Connections already
// returned by Accept belong to their server.
func (f *Front) Close() error {
	f.closeOnce.Do(func() {
		f.start.Do(func() {}) // nothing starts after this
		f.cancel()
		f.closeErr = f.lis.Close()
		stopGracefully(f.public, 5*time.Second)
		f.refusal.Stop()
		f.wg.Wait()
	})
	return f.closeErr
}

func (f *Front) serve() {
	if f.ctx.Err() != nil {
		return
	}
	f.wg.Add(3)
	go f.acceptLoop()
	for _, s := range []struct {
		srv   *grpc.Server
		conns chan net.Conn
	}{{f.public, f.pub}, {f.refusal, f.refused}} {
		go func() {
			defer f.wg.Done()
			// Serve ends when the Front closes; there is nothing else to report.
			_ = s.srv.Serve(&queue{conns: s.conns, done: f.ctx.Done(), addr: f.lis.Addr()})
		}()
	}
}

func (f *Front) acceptLoop() {
	defer f.wg.Done()
	defer close(f.acceptDone)
	for {
		raw, err := f.lis.Accept()
		if err != nil {
			var te interface{ Temporary() bool }
			if errors.As(err, &te) && te.Temporary() && f.ctx.Err() == nil {
				// Out of file descriptors, say: wait rather than spin, as
				// grpc-go's own accept loop does.
				select {
				case <-time.After(100 * time.Millisecond):
				case <-f.ctx.Done():
				}
				continue
			}
			f.acceptErr = err
			return
		}
		key, limited := f.peerKey(raw.RemoteAddr())
		if !f.startHandshake(key, limited) {
			f.warn("closed a connection: too many TLS handshakes in progress", key)
			_ = raw.Close() // refused before a byte was read; nothing to tell
			continue
		}
		f.wg.Add(1)
		go func() {
			defer f.endHandshake(key, limited)
			f.handshake(raw)
		}()
	}
}

// startHandshake counts a handshake about to start, unless the peer
// (PublicConnsPerPeer, when it is limited) or everyone together
// (MaxHandshakes) already has as many in progress as allowed.
func (f *Front) startHandshake(key string, limited bool) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.shakingAll >= f.limits.MaxHandshakes || (limited && f.shaking[key] >= f.limits.PublicConnsPerPeer) {
		return false
	}
	f.shakingAll++
	if limited {
		f.shaking[key]++
	}
	return true
}

func (f *Front) endHandshake(key string, limited bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.shakingAll--
	if limited {
		if f.shaking[key]--; f.shaking[key] <= 0 {
			delete(f.shaking, key)
		}
	}
}

func (f *Front) handshake(raw net.Conn) {
	defer f.wg.Done()
	conn := tls.Server(raw, f.tls)
	ctx, cancel := context.WithTimeout(f.ctx, f.limits.HandshakeTimeout)
	err := conn.HandshakeContext(ctx)
	cancel()
	if err == nil && conn.ConnectionState().NegotiatedProtocol != "h2" {
		err = errors.New("the client did not offer HTTP/2 (ALPN h2)")
	}
	if err != nil {
		f.log.Debug("TLS handshake failed", "addr", raw.RemoteAddr().String(), "err", err)
		_ = raw.Close() // dropped: how the close went tells nothing more
		return
	}
	if len(conn.ConnectionState().VerifiedChains) > 0 {
		f.hand(f.api, &frontConn{Conn: conn})
		return
	}
	f.admit(conn)
}

// admit hands a connection without a certificate to the public server,
// unless it would be over a limit.
func (f *Front) admit(conn *tls.Conn) {
	key, limited := f.peerKey(conn.RemoteAddr())
	f.mu.Lock()
	var refusal error
	switch {
	case f.openAll >= f.limits.PublicConns:
		refusal = status.Errorf(codes.ResourceExhausted, "the controller has %d connections without a client certificate open, its limit; wait a few seconds and retry", f.openAll)
	case limited && f.open[key] >= f.limits.PublicConnsPerPeer:
		refusal = status.Errorf(codes.ResourceExhausted, "the controller refuses more connections without a client certificate from %s: at most %d may be open at once; wait a few seconds and retry", key, f.limits.PublicConnsPerPeer)
	case limited && !f.conns.Allow(key):
		refusal = status.Errorf(codes.ResourceExhausted, "the controller refuses more connections without a client certificate from %s: new ones are allowed at %v; wait a few seconds and retry", key, f.limits.PublicConnRate)
	default:
		f.openAll++
		if limited {
			f.open[key]++
		}
	}
	f.mu.Unlock()
	if refusal != nil {
		f.refuseConn(conn, key, refusal)
		return
	}
	f.hand(f.pub, &frontConn{Conn: conn, onClose: func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.openAll--
		if limited {
			f.open[key]--
			if f.open[key] == 0 {
				delete(f.open, key)
			}
		}
	}})
}

// peerKey is the key an address is limited under, and whether the
// per-address limits apply to it.
func (f *Front) peerKey(a net.Addr) (key string, limited bool) {
	key, loopback := ratelimit.Peer(a)
	return key, !loopback || f.limits.LimitLoopback
}

// refuseConn has the refusal server answer the connection's calls with
// refusal for a moment, so the client learns why; past maxRefusals at once
// it is closed without a word.
func (f *Front) refuseConn(conn *tls.Conn, key string, refusal error) {
	f.warn("refused a connection without a client certificate: over the limit", key)
	select {
	case f.refusing <- struct{}{}:
	default:
		_ = conn.NetConn().Close() // closed without a word, as said above
		return
	}
	fc := &frontConn{Conn: conn, refusal: refusal, onClose: func() { <-f.refusing }}
	time.AfterFunc(refusalLinger, func() { _ = fc.Close() })
	f.hand(f.refused, fc)
}

// refuse answers every call of a refused connection.
func (f *Front) refuse(_ any, ss grpc.ServerStream) error {
	if p, ok := peer.FromContext(ss.Context()); ok {
		if r, ok := p.AuthInfo.(refusedInfo); ok {
			return r.refusal
		}
	}
	return status.Error(codes.ResourceExhausted, "the controller refuses connections without a client certificate for now; wait a few seconds and retry")
}

// tap runs when a public call's headers arrive, before a byte of its
// request is read (and under the transport's lock: it must be quick).
func (f *Front) tap(ctx context.Context, info *tap.Info) (context.Context, error) {
	if !f.policy(info.FullMethodName).Public {
		// What the auth interceptor would say, without the server's
		// "unknown service" for what is not registered here.
		return nil, errNeedsCertificate(info.FullMethodName)
	}
	if p, ok := peer.FromContext(ctx); ok {
		if key, limited := f.peerKey(p.Addr); limited && !f.calls.Allow(key) {
			f.warn("refused an enrollment request: its address is over the limit", key)
			return nil, status.Errorf(codes.ResourceExhausted, "too many enrollment requests from %s (at most %v); wait a few seconds and retry", key, f.limits.PublicCallRate)
		}
	}
	// Unlike the unary interceptor's, this deadline also covers reading the
	// request. Its timer is released when the stream ends.
	callCtx, cancel := context.WithTimeout(ctx, f.limits.UnaryTimeout)
	context.AfterFunc(ctx, cancel)
	return callCtx, nil
}

// warn logs a refusal, at most once a minute per address: an attack must
// not flood the log.
func (f *Front) warn(msg, key string) {
	if f.logs.Allow(key) {
		f.log.Warn(msg, "peer", key)
	}
}

// hand passes a connection to a server's queue, or closes it when the
// Front closes first.
func (f *Front) hand(q chan net.Conn, c *frontConn) {
	select {
	case q <- c:
	case <-f.ctx.Done():
		_ = c.Close() // the Front is closing: nobody serves it
	}
}

// stopGracefully lets the calls in flight finish for up to d, then cuts
// them.
func stopGracefully(s *grpc.Server, d time.Duration) {
	done := make(chan struct{})
	go func() { s.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
		s.Stop()
		<-done
	}
}

// queue is the listener a Front's own servers serve: the connections it
// routes to them.
type queue struct {
	conns chan net.Conn
	done  <-chan struct{}
	addr  net.Addr
}

func (q *queue) Accept() (net.Conn, error) {
	select {
	case c := <-q.conns:
		return c, nil
	case <-q.done:
		return nil, net.ErrClosed
	}
}

// Close is the Front's to do.
func (q *queue) Close() error   { return nil }
func (q *queue) Addr() net.Addr { return q.addr }

// frontConn is a connection whose TLS handshake a Front completed.
type frontConn struct {
	*tls.Conn
	refusal error  // why the connection is refused, if it is
	onClose func() // releases what admitting it took; may be nil
	once    sync.Once
}

func (c *frontConn) Close() error {
	err := c.Conn.Close()
	if c.onClose != nil {
		c.once.Do(c.onClose)
	}
	return err
}

// frontCreds are every server's transport credentials: a connection from a
// Front is TLS already and passes through; any other gets the TLS
// handshake (a server serving a plain listener, as tests do).
type frontCreds struct {
	credentials.TransportCredentials
}

func (c frontCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	fc, ok := raw.(*frontConn)
	if !ok {
		return c.TransportCredentials.ServerHandshake(raw)
	}
	info := credentials.TLSInfo{State: fc.ConnectionState(), CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}}
	if fc.refusal != nil {
		return fc, refusedInfo{TLSInfo: info, refusal: fc.refusal}, nil
	}
	return fc, info, nil
}

// refusedInfo is a refused connection's AuthInfo: it carries the refusal
// to the refusal server's handler.
type refusedInfo struct {
	credentials.TLSInfo
	refusal error
}

func (c frontCreds) Clone() credentials.TransportCredentials {
	return frontCreds{c.TransportCredentials.Clone()}
}
