// Package agent is the ferry-agent daemon: it keeps one stream to a
// controller (reconnecting with jittered exponential backoff, moving to
// another controller when it has several; package controllers chooses),
// heartbeats, renews its certificate before expiry, and runs the jobs it
// receives.
package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferrydeploy/ferry/agent/internal/backoff"
	"github.com/ferrydeploy/ferry/agent/internal/controllers"
	"github.com/ferrydeploy/ferry/agent/internal/facts"
	"github.com/ferrydeploy/ferry/agent/internal/fetch"
	"github.com/ferrydeploy/ferry/agent/internal/identity"
	"github.com/ferrydeploy/ferry/agent/internal/install"
	"github.com/ferrydeploy/ferry/agent/internal/logbuf"
	"github.com/ferrydeploy/ferry/agent/internal/selfupdate"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/archive"
	"github.com/ferrydeploy/ferry/shared/dirlock"
	"github.com/ferrydeploy/ferry/shared/gossip"
	"github.com/ferrydeploy/ferry/shared/pki"
	"github.com/ferrydeploy/ferry/shared/rpc"
	"github.com/ferrydeploy/ferry/shared/sdnotify"
	"github.com/ferrydeploy/ferry/shared/version"
)

// Config is the agent's configuration.
type Config struct {
	StateDir string // identity, installed packages, downloads
	Root     string // install root (default "/")
	// Controllers override the addresses recorded at enrollment: each
	// HOST:PORT, a controller of the installation (or a name resolving
	// to several); items may be comma-separated.
	Controllers []string
	// Resolve looks controller names up, at every connection attempt
	// (default: the system resolver).
	Resolve           func(ctx context.Context, host string) ([]string, error)
	HeartbeatInterval time.Duration // used until the controller's welcome says otherwise (default 5s)
	BackoffBase       time.Duration // first reconnect delay (default 500ms)
	BackoffMax        time.Duration // longest reconnect delay (default 30s)
	Logger            *slog.Logger
	Now               func() time.Time
	Rand              *rand.Rand // jitter source; the agent's own (not safe to share with another agent)
	Gossip            GossipConfig
	// DriftInterval is how often the installed trees are checked against
	// their manifests (0: DefaultDriftInterval; negative: never).
	DriftInterval time.Duration
	// MetricsAddr serves the agent's /metrics there ("" = off, the default).
	MetricsAddr string
	// PeerListen serves this agent's verified pieces to other agents
	// there (peer exchange, package exchange), and lets it fetch pieces
	// from them; "" (the default) does neither.
	PeerListen string
	// NoPeerExchange turns peer exchange off even with PeerListen set
	// (--peer-exchange=false): no piece server, downloads from the
	// controller only.
	NoPeerExchange bool
	// NewFetcher builds the artifact downloader on the agent's connection.
	NewFetcher func(ferryv1.AgentServiceClient) (Fetcher, error)
	// Executable is the agent's own binary (symlinks resolved), which an
	// agent_update step replaces; "" refuses agent_update steps.
	Executable string
	// StartWatchdog starts the watchdog of a swap before the restart
	// (default selfupdate.StartWatchdog).
	StartWatchdog func(context.Context, selfupdate.WatchSpec) error
}

// lockFile in the state dir is held by the running agent (package dirlock).
const lockFile = "agent.lock"

// LockFile is lockFile for the command line, which holds it while it
// restores a previous agent that could not start.
const LockFile = lockFile

// Agent is a running agent.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	id      *identity.Identity
	started time.Time

	ctls *controllers.List // used by Run's loop only

	mu        sync.Mutex
	rng       *rand.Rand
	endpoint  controllers.Endpoint // the controller dialled now (under mu)
	connected controllers.Endpoint // the one that welcomed the last session (under mu)
	seq       uint64
	sendMu    sync.Mutex
	stream    grpc.BidiStreamingClient[ferryv1.ConnectRequest, ferryv1.ConnectResponse]
	member    *gossip.Member
	jobs      *jobRunner
	logs      *logbuf.Buffer // job output until the controller has it
	logSend   sync.Mutex     // one sender of buffered output at a time, in order
	metrics   *agentMetrics
	drift     atomic.Pointer[ferryv1.DriftReport] // the last drift check
	driftKick chan struct{}                       // a job ended: check again
	// statusAt is when status.json was last written; welcomed when the
	// last session was welcomed (both under mu).
	statusAt   time.Time
	lastStatus statusKey // what was written then
	welcomed   time.Time
	renewed    chan struct{} // a renewal asks the session to redial
	// intervals carries a heartbeat interval the controller sent while
	// connected (AgentSettings), the newest only.
	intervals chan time.Duration
	fatal     chan error // the certificate expired: Run ends
	upd       *updateState
	// peerAddr is the piece server's address for the hello ("" without
	// one); set by Run before the first session.
	peerAddr string

	// Seams for tests: dialer, when set, makes the controller's
	// connections (TLS still on top); after waits out a reconnect delay.
	dialer func(ctx context.Context, addr string) (net.Conn, error)
	after  func(time.Duration) <-chan time.Time
}

// New loads the identity and checks the config.
func New(cfg Config) (*Agent, error) {
	if cfg.StateDir == "" {
		return nil, errors.New("agent: --state-dir is required")
	}
	if cfg.Root == "" {
		cfg.Root = "/"
	}
	if cfg.HeartbeatInterval <= 0 {
		cfg.HeartbeatInterval = 5 * time.Second
	}
	if cfg.BackoffBase <= 0 {
		cfg.BackoffBase = 500 * time.Millisecond
	}
	if cfg.BackoffMax <= 0 {
		cfg.BackoffMax = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.StartWatchdog == nil {
		cfg.StartWatchdog = selfupdate.StartWatchdog
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())) //nolint:gosec // jitters backoff and timers; nothing secret depends on it
	}
	id, err := identity.Load(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	entries := cfg.Controllers
	if len(entries) == 0 {
		entries = id.Info.ControllerList()
	}
	if entries, err = controllers.Parse(entries); err != nil {
		return nil, fmt.Errorf("%w (--controller, or the addresses recorded at enrollment in %s)", err, filepath.Join(cfg.StateDir, "identity.json"))
	}
	cfg.Controllers = entries
	a := &Agent{cfg: cfg, id: id, rng: cfg.Rand, started: cfg.Now(),
		log: cfg.Logger.With("node", id.Info.NodeID)}
	if a.ctls, err = controllers.New(controllers.Config{
		Entries: entries, Backoff: a.backoff, Start: cfg.Rand.IntN(1 << 20),
		Resolve: cfg.Resolve, Now: cfg.Now, Logger: a.log,
	}); err != nil {
		return nil, err
	}
	if err := a.id.CheckClock(cfg.Now()); err != nil {
		return nil, err
	}
	a.warnClock("when its certificate arrived")
	inst, err := install.New(install.Config{Root: cfg.Root, StateDir: cfg.StateDir, Logger: a.log.With("component", "install"), Executable: cfg.Executable, SweepInBackground: true})
	if err != nil {
		return nil, fmt.Errorf("installer: %w", err)
	}
	a.jobs = newJobRunner(a, inst)
	a.upd = newUpdateState()
	if a.logs, err = logbuf.New(logbuf.Config{Dir: filepath.Join(cfg.StateDir, "joblogs"), Now: cfg.Now, Logger: a.log.With("component", "joblogs")}); err != nil {
		return nil, err
	}
	a.metrics = newAgentMetrics()
	a.metrics.reg.MustRegister(a.clockSkewMetric())
	a.renewed = make(chan struct{}, 1)
	a.intervals = make(chan time.Duration, 1)
	a.driftKick = make(chan struct{}, 1)
	a.fatal = make(chan error, 1)
	a.after = time.After
	return a, nil
}

// NodeID is the enrolled node ID.
func (a *Agent) NodeID() string { return a.id.Info.NodeID }

// checkExpiry refuses to run with an expired certificate (by the
// controller's clock): a silent reconnect loop would never succeed.
func (a *Agent) checkExpiry() error {
	return a.id.CheckExpiry(a.cfg.Now())
}

// jitter returns d scaled by a random factor in [1-f, 1+f].
func (a *Agent) jitter(d time.Duration, f float64) time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	return backoff.Jitter(a.rng, d, f)
}

// backoff is the reconnect delay (backoff.FullJitter).
func (a *Agent) backoff(attempt int) time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	return backoff.FullJitter(a.rng, a.cfg.BackoffBase, a.cfg.BackoffMax, attempt)
}

// backoffMax is the longest reconnect delay now.
func (a *Agent) backoffMax() time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cfg.BackoffMax
}

// SetBackoffMax changes the longest reconnect delay (a config reload of
// --reconnect-max; zero or less: the default, 30s). The delay being
// waited out stays; the next one uses it.
func (a *Agent) SetBackoffMax(d time.Duration) {
	if d <= 0 {
		d = 30 * time.Second
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.cfg.BackoffMax = d
}

// agentKeepalive notices a half-open stream (the controller's host died,
// a NAT or firewall dropped the flow) within about 15 s: a ping after 10 s
// with nothing read, and the connection is dropped when no answer comes
// within 5 s. The controller's keepalive EnforcementPolicy.MinTime must be
// at most 10 s, or it answers these pings with GOAWAY "too_many_pings".
var agentKeepalive = keepalive.ClientParameters{Time: 10 * time.Second, Timeout: 5 * time.Second, PermitWithoutStream: true}

// dial makes a connection to the controller at ep; extra adds to the
// agent's dial options (fetch.BrokenLinkDialOptions for a broken-link
// connection). A resolved address is dialled as it is: the controller's
// certificate is verified under pki.ControllerServerName, whatever the
// address.
func (a *Agent) dial(ep controllers.Endpoint, extra ...grpc.DialOption) (*grpc.ClientConn, error) {
	tlsConf := rpc.ClientTLS(func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		return a.id.Certificate(), nil
	}, a.id.Pool())
	// The controller's certificate is judged by the controller's clock too:
	// the system clock, as TLS reads it by default, plus the skew.
	tlsConf.Time = func() time.Time { return a.id.ControllerTime(time.Now()) }
	opts := append(rpc.DialOptions(tlsConf), grpc.WithKeepaliveParams(agentKeepalive))
	if a.dialer != nil {
		opts = append(opts, grpc.WithContextDialer(a.dialer))
	}
	target := ep.Addr
	if ep.Resolved() {
		target = "passthrough:///" + ep.Addr
	}
	return grpc.NewClient(target, append(opts, extra...)...)
}

// currentEndpoint is the controller the agent dials now.
func (a *Agent) currentEndpoint() controllers.Endpoint {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.endpoint
}

// moveTo points the agent's connections at ep before an attempt: a new
// connection when ep is another controller, or when the current one is
// failing (gRPC would wait out its own backoff on it, on top of the
// agent's). Downloads and renewals running on the old connection fail
// and resume on the new one (downloads by digest, from their offset).
func (a *Agent) moveTo(ep controllers.Endpoint, client *swapClient, brokenLink *brokenLinks) error {
	cur := client.current()
	if cur != nil && a.currentEndpoint().Addr == ep.Addr && cur.GetState() != connectivity.TransientFailure {
		return nil
	}
	conn, err := a.dial(ep)
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.endpoint = ep
	a.mu.Unlock()
	client.set(conn)
	old := brokenLink.redial(ep)
	if cur != nil {
		old = append(old, cur)
	}
	for _, c := range old {
		_ = c.Close() // fails only when already closed
	}
	return nil
}

// jobDrainTimeout bounds how long a graceful stop waits for a running job
// (systemd's default stop timeout is 90 s).
const jobDrainTimeout = 60 * time.Second

// Run connects and serves until ctx ends. On cancellation it lets a
// running job finish (bounded), then closes its stream gracefully so the
// controller records the node as left.
func (a *Agent) Run(ctx context.Context) error {
	// Two agents on one state dir would replace each other's stream and
	// race on the packages they install: the second refuses to start.
	lock, err := dirlock.Acquire(a.cfg.StateDir, lockFile)
	var held *dirlock.HeldError
	if errors.As(err, &held) {
		return fmt.Errorf("state dir %w; another ferry-agent runs on it: stop that one, or give this one its own --state-dir", held)
	}
	if err != nil {
		return fmt.Errorf("lock the state dir: %w", err)
	}
	defer func() { _ = lock.Release() }() // the process may end instead: the kernel releases it then
	// A finished job's old tree may still be being removed: done before
	// the lock goes (a leftover would be removed at the next start).
	defer a.jobs.inst.Settle()
	// After the lock: only the agent that owns the state dir acts on an
	// update's marker.
	if err := a.settleUpdate(); err != nil {
		return fmt.Errorf("agent update marker: %w", err)
	}
	if a.restarting() {
		return a.restartError() // a new agent past its deadline restored the previous one
	}
	ep, _ := a.ctls.Next(ctx)
	client := &swapClient{}
	// Downloads over a link that keeps breaking streams move to
	// connections with static windows (see package fetch).
	brokenLink := &brokenLinks{a: a, conns: map[int32]*swapClient{}}
	if err := a.moveTo(ep, client, brokenLink); err != nil {
		return fmt.Errorf("controller %s: %w", ep, err)
	}
	// Close fails only on a connection already closed; at shutdown there
	// is nothing left to do about it.
	defer func() { _ = client.current().Close() }()
	defer brokenLink.close()
	peers := a.peerClient()
	if peers != nil {
		defer peers.Close()
	}
	newFetcher := a.cfg.NewFetcher
	if newFetcher == nil {
		newFetcher = func(c ferryv1.AgentServiceClient) (Fetcher, error) {
			fc := fetch.Config{StateDir: a.cfg.StateDir, Client: c, BrokenLink: brokenLink.client, Logger: a.log.With("component", "fetch")}
			if peers != nil {
				fc.Peers = peers
				fc.PieceFetched = func(source string, n int) { a.metrics.pieceBytes.WithLabelValues(source).Add(float64(n)) }
				fc.BadPiece = a.metrics.badPieces.Inc
			}
			return fetch.New(fc)
		}
	}
	f, err := newFetcher(client)
	if err != nil {
		return fmt.Errorf("artifact fetcher: %w", err)
	}
	a.jobs.fetcher = f
	if err := a.startPieceServer(ctx, client, f); err != nil {
		return err
	}
	// Jobs are not cancelled by the stop signal: Run waits for the running
	// one (bounded) so a routine restart does not turn it into a failure.
	jobsCtx, stopJobs := context.WithCancel(context.WithoutCancel(ctx))
	jobsDone := make(chan struct{})
	go func() { a.jobs.run(jobsCtx); close(jobsDone) }()
	go a.logLoop(jobsCtx)
	defer func() {
		if !a.jobs.drain(jobDrainTimeout) {
			a.log.Warn("a job is still running after the stop timeout; cancelling it", "timeout", jobDrainTimeout)
		}
		stopJobs()
		<-jobsDone
	}()

	if a.cfg.MetricsAddr != "" {
		if err := a.serveMetrics(ctx, a.cfg.MetricsAddr); err != nil {
			return fmt.Errorf("--metrics-listen %s: %w", a.cfg.MetricsAddr, err)
		}
	}
	a.startGossip()
	defer a.leaveGossip()
	// Ready once the identity and installer are loaded: a node that cannot
	// reach its controller is still a running agent that keeps trying.
	_ = sdnotify.Ready()
	go func() {
		if err := a.renewLoop(ctx, client); err != nil {
			a.fatal <- err
		}
	}()
	if a.cfg.DriftInterval >= 0 {
		interval := a.cfg.DriftInterval
		if interval == 0 {
			interval = DefaultDriftInterval
		}
		go a.driftLoop(ctx, interval)
	}
	defer a.writeStatus(false, true)

	go a.watchProbation(ctx.Done())

	for {
		var welcomedAt time.Time
		a.ctls.Tried(ep)
		err := a.moveTo(ep, client, brokenLink)
		if err == nil {
			err = a.session(ctx, client, brokenLink, ep, &welcomedAt)
		}
		if a.restarting() {
			return a.restartError()
		}
		if ctx.Err() != nil {
			return nil
		}
		a.writeStatus(false, true)
		var fe *backoff.PermanentError
		if errors.As(err, &fe) {
			return fe.Err
		}
		// An established session starts the controller's count over, so
		// a link that drops every few seconds reconnects after the
		// shortest delays (still fully jittered); a stream dropped within
		// MinSession of its welcome counts as a failure (see package
		// backoff). Each controller counts its own failures.
		if !welcomedAt.IsZero() && a.cfg.Now().Sub(welcomedAt) >= backoff.MinSession {
			a.ctls.Established(ep)
		}
		hint := a.clockHint(err)
		refused := status.Code(err) == codes.PermissionDenied || status.Code(err) == codes.Unauthenticated
		var hold time.Duration
		if hint != "" || refused {
			// Retrying fast cannot help until a clock is fixed, or when
			// the node was removed or its certificate is refused: the
			// controller waits the longest delay.
			hold = a.backoffMax()
		}
		a.ctls.Failed(ep, hold)
		next, delay := a.ctls.Next(ctx)
		a.metrics.reconnects.Inc()
		logArgs := []any{"controller", ep.String(), "err", err, "retry_in", delay}
		if next.Addr != ep.Addr {
			logArgs = append(logArgs, "next", next.String())
		}
		switch {
		case hint != "":
			a.log.Error(hint, logArgs...)
		case refused:
			a.log.Error("controller refused this node; it must be re-enrolled if it was removed", logArgs...)
		case next.Addr != ep.Addr:
			a.log.Warn(fmt.Sprintf("stream to controller ended (%s); moving to controller %s", lostReason(err), next), logArgs...)
		default:
			a.log.Warn(fmt.Sprintf("stream to controller ended (%s)", lostReason(err)), logArgs...)
		}
		ep = next
		select {
		case <-ctx.Done():
			return nil
		case err := <-a.fatal:
			return err
		case <-a.upd.restart:
			return a.restartError()
		case <-a.after(delay):
		}
	}
}

// brokenLinks are the agent's connections for downloads over a link that
// breaks streams, one per static window (fetch.BrokenLinkDialOptions),
// each dialled when first asked for; gRPC connects it at its first call.
type brokenLinks struct {
	a     *Agent
	mu    sync.Mutex
	conns map[int32]*swapClient
}

// client is fetch.Config.BrokenLink: nil (use the main connection) if the
// connection cannot be made.
func (b *brokenLinks) client(window int32) ferryv1.AgentServiceClient {
	b.mu.Lock()
	defer b.mu.Unlock()
	if c := b.conns[window]; c != nil {
		return c
	}
	conn, err := b.a.dial(b.a.currentEndpoint(), fetch.BrokenLinkDialOptions(window)...)
	if err != nil {
		b.a.log.Warn("dial a broken-link download connection; downloading over the main one", "window", window, "err", err)
		return nil
	}
	c := &swapClient{}
	c.set(conn)
	b.conns[window] = c
	return c
}

// redial moves every connection to a new one to ep (a renewed
// certificate, another controller) and returns the old ones, to be
// closed by the caller. One that cannot be dialled is dropped: the next
// download that needs it dials it again.
func (b *brokenLinks) redial(ep controllers.Endpoint) []*grpc.ClientConn {
	b.mu.Lock()
	defer b.mu.Unlock()
	var old []*grpc.ClientConn
	for window, c := range b.conns {
		conn, err := b.a.dial(ep, fetch.BrokenLinkDialOptions(window)...)
		if err != nil {
			b.a.log.Warn("dial a broken-link download connection", "controller", ep.String(), "window", window, "err", err)
			old = append(old, c.current())
			delete(b.conns, window)
			continue
		}
		old = append(old, c.current())
		c.set(conn)
	}
	return old
}

func (b *brokenLinks) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, c := range b.conns {
		_ = c.current().Close() // fails only when already closed
	}
}

// swapClient is the agent's AgentService client over whichever connection
// is current. After a certificate renewal the agent dials a new connection
// (it presents the new certificate) and new calls (downloads, renewals,
// the next stream) use it, while the open stream finishes on the old one.
type swapClient struct {
	p    atomic.Pointer[ferryv1.AgentServiceClient]
	conn atomic.Pointer[grpc.ClientConn]
}

func (c *swapClient) set(conn *grpc.ClientConn) {
	cl := ferryv1.NewAgentServiceClient(conn)
	c.p.Store(&cl)
	c.conn.Store(conn)
}

func (c *swapClient) current() *grpc.ClientConn { return c.conn.Load() }

func (c *swapClient) Connect(ctx context.Context, opts ...grpc.CallOption) (grpc.BidiStreamingClient[ferryv1.ConnectRequest, ferryv1.ConnectResponse], error) {
	return (*c.p.Load()).Connect(ctx, opts...)
}

func (c *swapClient) RenewCertificate(ctx context.Context, in *ferryv1.RenewCertificateRequest, opts ...grpc.CallOption) (*ferryv1.RenewCertificateResponse, error) {
	return (*c.p.Load()).RenewCertificate(ctx, in, opts...)
}

func (c *swapClient) DownloadArtifact(ctx context.Context, in *ferryv1.DownloadArtifactRequest, opts ...grpc.CallOption) (grpc.ServerStreamingClient[ferryv1.DownloadArtifactResponse], error) {
	return (*c.p.Load()).DownloadArtifact(ctx, in, opts...)
}

func (c *swapClient) ReportArtifactMismatch(ctx context.Context, in *ferryv1.ReportArtifactMismatchRequest, opts ...grpc.CallOption) (*ferryv1.ReportArtifactMismatchResponse, error) {
	return (*c.p.Load()).ReportArtifactMismatch(ctx, in, opts...)
}

func (c *swapClient) GetPieces(ctx context.Context, in *ferryv1.GetPiecesRequest, opts ...grpc.CallOption) (*ferryv1.GetPiecesResponse, error) {
	return (*c.p.Load()).GetPieces(ctx, in, opts...)
}

func (c *swapClient) AuthorizePeer(ctx context.Context, in *ferryv1.AuthorizePeerRequest, opts ...grpc.CallOption) (*ferryv1.AuthorizePeerResponse, error) {
	return (*c.p.Load()).AuthorizePeer(ctx, in, opts...)
}

func (c *swapClient) ReportBadPeer(ctx context.Context, in *ferryv1.ReportBadPeerRequest, opts ...grpc.CallOption) (*ferryv1.ReportBadPeerResponse, error) {
	return (*c.p.Load()).ReportBadPeer(ctx, in, opts...)
}

func (a *Agent) send(m *ferryv1.ConnectRequest) error {
	a.sendMu.Lock()
	defer a.sendMu.Unlock()
	if a.stream == nil {
		return errors.New("not connected")
	}
	return a.stream.Send(m)
}

// connectTimeout bounds how long one attempt waits for the controller to
// accept the stream (TLS handshake, hello, welcome).
const connectTimeout = 10 * time.Second

// errNoWelcome is an attempt the controller did not answer in time.
var errNoWelcome = fmt.Errorf("no welcome within %v", connectTimeout)

// session runs one stream to ep until it fails or ctx ends. It sets
// *welcomedAt to the agent's time when the controller's welcome arrives.
// A renewed certificate moves client and brokenLink to new connections.
func (a *Agent) session(ctx context.Context, client *swapClient, brokenLink *brokenLinks, ep controllers.Endpoint, welcomedAt *time.Time) (err error) {
	var retired []*grpc.ClientConn // connections replaced during this session
	defer func() {
		for _, c := range retired {
			_ = c.Close() // fails only when already closed
		}
	}()
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	// The attempt waits for the connection (a failed dial fails it at
	// once: the agent's backoff, per controller, paces the next), the
	// stream and the welcome, up to connectTimeout or until the agent
	// stops.
	welcomed := make(chan struct{})
	var welcomeOnce sync.Once
	markWelcomed := func() { welcomeOnce.Do(func() { close(welcomed) }) }
	defer markWelcomed()
	var timedOut atomic.Bool
	go func() {
		t := time.NewTimer(connectTimeout)
		defer t.Stop()
		select {
		case <-welcomed:
		case <-t.C:
			timedOut.Store(true)
			cancel()
		case <-ctx.Done():
			cancel()
		case <-a.upd.restart:
			cancel()
		}
	}()
	defer func() {
		if err != nil && timedOut.Load() {
			err = errNoWelcome
		}
	}()
	stream, err := client.Connect(sctx)
	if err != nil {
		return err
	}
	var recent []*ferryv1.JobUpdate
	for _, u := range append(a.jobs.inst.Interrupted(), a.jobs.inst.RecentResults()...) {
		if !a.onProbation(u.GetJobId()) { // reported once welcomed
			recent = append(recent, u)
		}
	}
	// Codecs: the encoding this agent extracts besides the original (the
	// zstd tar the controller transcodes tar and tar.gz artifacts into).
	hello := &ferryv1.AgentHello{AgentVersion: version.Version, Facts: a.facts(), GossipAddress: a.gossipAddr(),
		Installed: a.jobs.inst.Installed(), RecentJobs: recent, Codecs: []string{archive.CodecZstd}, PeerAddress: a.peerAddr}
	helloSent := a.cfg.Now()
	if err := stream.Send(&ferryv1.ConnectRequest{Msg: &ferryv1.ConnectRequest_Hello{Hello: hello}}); err != nil {
		return err
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	welcome := first.GetWelcome()
	if welcome == nil {
		return errors.New("controller did not answer the hello with a welcome")
	}
	markWelcomed()
	a.measureSkew(helloSent, a.cfg.Now(), welcome.GetServerTime())
	*welcomedAt = a.cfg.Now()
	a.mu.Lock()
	a.welcomed = *welcomedAt
	a.mu.Unlock()
	interval := a.cfg.HeartbeatInterval
	if d := welcome.GetHeartbeatInterval().AsDuration(); d > 0 {
		interval = d
	}
	a.sendMu.Lock()
	a.stream = stream
	a.sendMu.Unlock()
	a.metrics.connected.Set(1)
	defer func() {
		a.metrics.connected.Set(0)
		a.sendMu.Lock()
		a.stream = nil
		a.sendMu.Unlock()
	}()
	select { // a change sent to an earlier session: the welcome is newer
	case <-a.intervals:
	default:
	}
	a.mu.Lock()
	prev := a.connected
	a.connected = ep
	a.mu.Unlock()
	switch {
	case prev.Addr != "" && prev.Addr != ep.Addr:
		a.log.Info(fmt.Sprintf("connected to controller %s, moved from %s", ep, prev), "controller", ep.String(), "previous", prev.String(), "heartbeat_interval", interval)
	default:
		a.log.Info("connected to controller", "controller", ep.String(), "heartbeat_interval", interval)
	}
	a.logs.Resend() // what the controller may not have yet: it drops what it has
	go a.sendLogs()
	a.welcomeGossip(ctx, welcome)

	recvErr := make(chan error, 1)
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			a.handle(m)
		}
	}()

	if err := a.heartbeat(); err != nil {
		return err
	}
	a.confirmUpdate() // welcomed and heartbeating: a new agent passed
	timer := time.NewTimer(a.jitter(interval, 0.1))
	defer timer.Stop()
	ticked := a.cfg.Now() // to notice this node's clock stepping forward
	for {
		select {
		case <-ctx.Done():
			// Graceful: let a running job finish and report (bounded),
			// leave gossip (so peers record "left", not "dead"), then close
			// our side and wait briefly for the controller to end the
			// stream, so it records a clean leave.
			a.jobs.drain(jobDrainTimeout)
			a.leaveGossip()
			a.sendMu.Lock()
			_ = stream.CloseSend()
			a.sendMu.Unlock()
			select {
			case err := <-recvErr:
				// The end we asked for: EOF, or the stream's context ending.
				a.log.Debug("stream ended after leaving", "err", err)
			case <-time.After(2 * time.Second):
			}
			return nil
		case err := <-recvErr:
			if errors.Is(err, io.EOF) {
				return errors.New("controller closed the stream")
			}
			return err
		case <-a.renewed:
			// Switch new calls to a connection with the new certificate
			// now; this stream stays on the old one (it was authenticated
			// when it opened), which is closed when the session ends.
			next, err := a.dial(ep)
			if err != nil {
				a.log.Warn("dial with the renewed certificate", "err", err)
				break
			}
			retired = append(retired, client.current())
			retired = append(retired, brokenLink.redial(ep)...)
			client.set(next)
			a.log.Info("new calls use the renewed certificate")
		case err := <-a.fatal:
			return backoff.Permanent(err) // ends Run (e.g. the certificate expired)
		case d := <-a.intervals:
			if d != interval {
				a.log.Info("controller changed the heartbeat interval", "old", interval, "new", d)
				interval = d
				timer.Reset(a.jitter(interval, 0.1))
			}
		case <-a.upd.restart:
			return a.restartError()
		case <-timer.C:
			now := a.cfg.Now()
			if identity.ClockStep(ticked, now) > clockWarnAfter {
				return errors.New("this node's clock jumped forward (or the host was suspended); reconnecting to measure its skew from the controller's clock again")
			}
			ticked = now
			if err := a.heartbeat(); err != nil {
				return err
			}
			timer.Reset(a.jitter(interval, 0.1))
		}
	}
}

func (a *Agent) heartbeat() error {
	a.mu.Lock()
	a.seq++
	seq := a.seq
	a.mu.Unlock()
	l1, l5, l15 := facts.Load()
	disks := facts.Disks(a.cfg.StateDir, a.cfg.Root, a.jobs.inst.Destinations()) // one statfs per file system, the root's free space included
	hb := &ferryv1.Heartbeat{
		Seq:           seq,
		SentAt:        timestamppb.New(a.cfg.Now()),
		AgentVersion:  version.Version,
		Uptime:        durationpb.New(a.cfg.Now().Sub(a.started)),
		Load1:         l1,
		Load5:         l5,
		Load15:        l15,
		DiskFreeBytes: facts.FreeFor(disks, facts.UseRoot),
		Facts:         a.facts(),
		Installed:     a.jobs.inst.Installed(),
		Disks:         disks,
		Drift:         a.drift.Load(),
	}
	if err := a.send(&ferryv1.ConnectRequest{Msg: &ferryv1.ConnectRequest_Heartbeat{Heartbeat: hb}}); err != nil {
		return err
	}
	a.writeStatus(true, seq == 1)
	a.metrics.heartbeats.Inc()
	return nil
}

// handle processes one controller message.
func (a *Agent) handle(m *ferryv1.ConnectResponse) {
	switch msg := m.Msg.(type) {
	case *ferryv1.ConnectResponse_Job:
		a.jobs.submit(msg.Job)
	case *ferryv1.ConnectResponse_Cancel:
		a.log.Info("job cancel received", "job", msg.Cancel.GetJobId())
		a.jobs.cancel(msg.Cancel.GetJobId())
	case *ferryv1.ConnectResponse_GossipKey:
		a.applyGossipKey(msg.GossipKey)
	case *ferryv1.ConnectResponse_LogAck:
		a.logs.Ack(msg.LogAck.GetJobId(), msg.LogAck.GetSeq())
	case *ferryv1.ConnectResponse_Settings:
		if d := msg.Settings.GetHeartbeatInterval().AsDuration(); d > 0 {
			select { // keep only the newest
			case <-a.intervals:
			default:
			}
			a.intervals <- d
		}
	}
}

// renewLoop renews the certificate once two thirds of its lifetime have
// passed by the controller's clock. It returns an error only when the
// certificate has expired.
func (a *Agent) renewLoop(ctx context.Context, client ferryv1.AgentServiceClient) error {
	for {
		leaf := a.id.Certificate().Leaf
		life := a.id.Lifetime()
		wait := a.id.RenewIn(a.cfg.Now())
		if wait > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(min(wait, time.Hour)):
				continue
			}
		}
		if err := a.renew(ctx, client); err != nil {
			if err := a.checkExpiry(); err != nil {
				return err
			}
			a.log.Warn("certificate renewal failed; will retry", "err", err, "expires", leaf.NotAfter)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(a.jitter(min(time.Minute, life/20+time.Second), 0.2)):
			}
		}
	}
}

func (a *Agent) renew(ctx context.Context, client ferryv1.AgentServiceClient) error {
	key, err := pki.NewKey()
	if err != nil {
		return err
	}
	csr, err := pki.CreateCSR(key, pki.Identity{Role: pki.RoleAgent, Name: a.id.Info.NodeID})
	if err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := client.RenewCertificate(rctx, &ferryv1.RenewCertificateRequest{CsrDer: csr})
	if err != nil {
		return err
	}
	cert, err := parseAgentCert(resp.GetCertificateDer(), a.id, key)
	if err != nil {
		return err
	}
	if err := a.id.Replace(key, cert); err != nil {
		return fmt.Errorf("store renewed certificate: %w", err)
	}
	a.log.Info("certificate renewed", "expires", cert.NotAfter)
	select {
	case a.renewed <- struct{}{}:
	default:
	}
	return nil
}
