package scale

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferrydeploy/ferry/agent/internal/backoff"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/rpc"
)

// AgentVersion is what simulated agents report.
const AgentVersion = "scale-sim"

// Reconnect selects how a simulated agent gets its stream back. The
// default is the real agent's way; the others are candidates measured
// against it.
type Reconnect string

const (
	// ReconnectAgent is the real agent: its full-jitter backoff is the
	// only one; each attempt resets gRPC's connection backoff
	// (ClientConn.ResetConnectBackoff) and waits up to ResetWait for the
	// channel to connect (agent/internal/agent: session).
	ReconnectAgent Reconnect = "agent"
	// ReconnectStacked is the agent before that fix, kept for comparison:
	// each attempt a Connect call that fails fast while gRPC's channel
	// waits out its own connection backoff (1s·1.6^n ±20%, up to 120s),
	// stacking two backoffs.
	ReconnectStacked Reconnect = "stacked"
	// ReconnectWaitForReady makes the Connect call wait for the channel
	// (grpc.WaitForReady) and caps gRPC's connection backoff at the
	// agent's 30s: one backoff, gRPC's, instead of two stacked.
	ReconnectWaitForReady Reconnect = "wait-for-ready"
	// ReconnectReset is ReconnectAgent under the name it was measured as.
	ReconnectReset Reconnect = "reset"
)

// ResetWait bounds how long an attempt waits for the channel (the real
// agent's connectTimeout).
const ResetWait = 10 * time.Second

// AgentConfig is what every simulated agent shares.
type AgentConfig struct {
	Controller string // host:port
	// Controllers, when set, replaces Controller: several controllers'
	// addresses. Agent i starts on Controllers[i mod len] (so a fleet is
	// spread evenly) and moves to the next address after a failed attempt
	// or a lost stream, as the real agent does with --controller a,b,c.
	Controllers       []string
	CA                *x509.CertPool // the Ferry CA
	HeartbeatInterval time.Duration  // used until the welcome names one (default 5s)
	BackoffBase       time.Duration  // default 500ms, as the real agent
	BackoffMax        time.Duration  // default 30s, as the real agent
	Facts             *ferryv1.Facts // template; the hostname is set to the node ID
	Reconnect         Reconnect      // default ReconnectAgent
	// JobSteps is how many step results a simulated install reports (a
	// real package's archive, env, sudoers and check steps: default 4).
	JobSteps int
}

func (c *AgentConfig) defaults() {
	if c.HeartbeatInterval <= 0 {
		c.HeartbeatInterval = 5 * time.Second
	}
	if c.BackoffBase <= 0 {
		c.BackoffBase = 500 * time.Millisecond
	}
	if c.BackoffMax <= 0 {
		c.BackoffMax = 30 * time.Second
	}
	if c.Reconnect == "" {
		c.Reconnect = ReconnectAgent
	}
	if len(c.Controllers) == 0 && c.Controller != "" {
		c.Controllers = []string{c.Controller}
	}
	if c.JobSteps <= 0 {
		c.JobSteps = 4
	}
	if c.Facts == nil {
		c.Facts = &ferryv1.Facts{Os: "linux", Arch: "amd64"}
	}
}

// Agent is one simulated agent: its own certificate and TLS connection,
// the real agent's stream protocol (hello, welcome, heartbeats) and its
// reconnect loop. It does not gossip. A job it is sent it answers as an
// install that succeeds at once (accepted, installing, succeeded with
// JobSteps step results), without touching the disk; a JobCancel it
// ignores.
type Agent struct {
	ID    string
	cfg   *AgentConfig
	first int // index of the controller address it starts on
	cert  *tls.Certificate
	facts *ferryv1.Facts
	rng   *rand.Rand // used by the agent's own goroutine only
	start time.Time  // wall clock; heartbeats carry time since then as uptime

	sessions    atomic.Int64 // streams established (welcome received)
	failures    atomic.Int64 // streams that failed or ended, and failed attempts
	heartbeats  atomic.Int64
	interval    atomic.Int64           // the heartbeat interval in use, nanoseconds
	jobs        atomic.Int64           // jobs received
	jobUpdates  atomic.Int64           // job updates sent
	lastWelcome atomic.Int64           // unix nanoseconds
	lastAttempt atomic.Int64           // unix nanoseconds: the latest session's start
	lastStream  atomic.Int64           // unix nanoseconds: the latest Connect call's return
	addr        atomic.Pointer[string] // the controller address of the latest attempt
	lastErr     atomic.Pointer[string]
}

// NewAgent returns a simulated agent for node id with its certificate.
func NewAgent(cfg *AgentConfig, id string, cert *tls.Certificate, seed uint64) *Agent {
	f := proto.CloneOf(cfg.Facts)
	f.Hostname = id
	return &Agent{ID: id, cfg: cfg, cert: cert, facts: f, start: time.Now(),
		rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

// Sessions is how many streams the agent has established.
func (a *Agent) Sessions() int64 { return a.sessions.Load() }

// Failures counts streams that ended and connection attempts that failed.
func (a *Agent) Failures() int64 { return a.failures.Load() }

// Jobs is how many jobs the agent has been sent; JobUpdates how many
// updates it sent about them.
func (a *Agent) Jobs() int64       { return a.jobs.Load() }
func (a *Agent) JobUpdates() int64 { return a.jobUpdates.Load() }

// Interval is the heartbeat interval the agent uses now (0 before its
// first welcome).
func (a *Agent) Interval() time.Duration { return time.Duration(a.interval.Load()) }

// Heartbeats is how many heartbeats the agent has sent.
func (a *Agent) Heartbeats() int64 { return a.heartbeats.Load() }

// LastWelcome is when the agent last received a welcome (zero if never).
func (a *Agent) LastWelcome() time.Time {
	n := a.lastWelcome.Load()
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// LastError is why the agent's last stream or attempt ended ("" if none).
func (a *Agent) LastError() string {
	if p := a.lastErr.Load(); p != nil {
		return *p
	}
	return ""
}

// LastAttempt is when the agent's latest stream attempt began and when
// its Connect call returned (the transport ready and the stream open, or
// an error).
func (a *Agent) LastAttempt() (began, streamed time.Time) {
	return time.Unix(0, a.lastAttempt.Load()), time.Unix(0, a.lastStream.Load())
}

// Controller is the address of the controller the agent's latest stream
// attempt went to ("" before its first): the controller it is on when
// LastWelcome is newer than LastAttempt's began.
func (a *Agent) Controller() string {
	if p := a.addr.Load(); p != nil {
		return *p
	}
	return ""
}

// SentAt maps the uptime a heartbeat carried back to when it was sent.
func (a *Agent) SentAt(uptime time.Duration) time.Time { return a.start.Add(uptime) }

// Run connects and heartbeats until ctx ends, reconnecting as the real
// agent does; then it closes its stream gracefully.
func (a *Agent) Run(ctx context.Context) error {
	conf := rpc.ClientTLS(func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return a.cert, nil }, a.cfg.CA)
	opts := rpc.DialOptions(conf)
	if a.cfg.Reconnect == ReconnectWaitForReady {
		opts = append(opts, grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           grpcbackoff.Config{BaseDelay: time.Second, Multiplier: 1.6, Jitter: 0.2, MaxDelay: a.cfg.BackoffMax},
			MinConnectTimeout: 20 * time.Second,
		}))
	}
	addrs := a.cfg.Controllers
	if len(addrs) == 0 {
		return fmt.Errorf("agent %s: no controller address", a.ID)
	}
	cur := a.first % len(addrs)
	dial := func() (*grpc.ClientConn, error) {
		conn, err := grpc.NewClient(addrs[cur], opts...)
		if err != nil {
			return nil, fmt.Errorf("agent %s: dial %s: %w", a.ID, addrs[cur], err)
		}
		return conn, nil
	}
	conn, err := dial()
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close() }()
	attempt := 0
	for {
		welcomesBefore := a.sessions.Load()
		a.addr.Store(&addrs[cur])
		err := a.session(ctx, conn)
		if ctx.Err() != nil {
			return nil
		}
		a.failures.Add(1)
		if err != nil {
			msg := err.Error()
			a.lastErr.Store(&msg)
		}
		if len(addrs) > 1 { // the next controller, as the real agent moves on
			_ = conn.Close()
			cur = (cur + 1) % len(addrs)
			if conn, err = dial(); err != nil {
				return err
			}
		}
		// The real agent's rule: a welcomed session that stayed up for
		// backoff.MinSession resets the counter.
		if a.sessions.Load() > welcomesBefore && time.Since(a.LastWelcome()) > backoff.MinSession {
			attempt = 0
		}
		delay := backoff.FullJitter(a.rng, a.cfg.BackoffBase, a.cfg.BackoffMax, attempt)
		attempt++
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
	}
}

// session runs one stream until it fails or ctx ends.
func (a *Agent) session(ctx context.Context, conn *grpc.ClientConn) error {
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	a.lastAttempt.Store(time.Now().UnixNano())
	// Waiting for the channel (the variants) ends with ctx or ResetWait,
	// but only until the welcome: then the session ends as the real
	// agent's does, gracefully.
	var opts []grpc.CallOption
	var disarm []func() bool
	defer func() {
		for _, f := range disarm {
			f()
		}
	}()
	switch a.cfg.Reconnect {
	case ReconnectWaitForReady:
		opts = append(opts, grpc.WaitForReady(true))
		disarm = append(disarm, context.AfterFunc(ctx, cancel))
	case ReconnectAgent, ReconnectReset:
		conn.ResetConnectBackoff()
		opts = append(opts, grpc.WaitForReady(true))
		disarm = append(disarm, context.AfterFunc(ctx, cancel), time.AfterFunc(ResetWait, cancel).Stop)
	}
	stream, err := ferryv1.NewAgentServiceClient(conn).Connect(sctx, opts...)
	a.lastStream.Store(time.Now().UnixNano())
	if err != nil {
		return err
	}
	hello := &ferryv1.AgentHello{AgentVersion: AgentVersion, Facts: a.facts}
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
	interval := a.cfg.HeartbeatInterval
	if d := welcome.GetHeartbeatInterval().AsDuration(); d > 0 {
		interval = d
	}
	// Only this goroutine sends on the stream; what the controller sends
	// comes over these from the receiving one.
	jobs := make(chan *ferryv1.Job, 4)
	settings := make(chan time.Duration, 1)
	for _, f := range disarm {
		f()
	}
	a.interval.Store(int64(interval))
	a.lastWelcome.Store(time.Now().UnixNano())
	a.sessions.Add(1)

	recvErr := make(chan error, 1)
	go func() {
		for {
			msg, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			switch {
			case msg.GetJob() != nil:
				select {
				case jobs <- msg.GetJob():
				case <-sctx.Done():
					return
				}
			case msg.GetSettings().GetHeartbeatInterval().AsDuration() > 0:
				select {
				case <-settings:
				default:
				}
				settings <- msg.GetSettings().GetHeartbeatInterval().AsDuration()
			}
		}
	}()
	if err := a.heartbeat(stream); err != nil {
		return err
	}
	timer := time.NewTimer(backoff.Jitter(a.rng, interval, 0.1))
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			_ = stream.CloseSend()
			select {
			case <-recvErr: //nolint:errcheck // waiting for the stream to end; how it ends does not matter now
			case <-time.After(2 * time.Second):
			}
			return nil
		case err := <-recvErr:
			if errors.Is(err, io.EOF) {
				return errors.New("controller closed the stream")
			}
			return err
		case <-timer.C:
			if err := a.heartbeat(stream); err != nil {
				return err
			}
			timer.Reset(backoff.Jitter(a.rng, interval, 0.1))
		case d := <-settings:
			// The real agent's rule: the new interval from the next beat on.
			interval = d
			a.interval.Store(int64(interval))
			timer.Reset(backoff.Jitter(a.rng, interval, 0.1))
		case job := <-jobs:
			if err := a.runJob(stream, job); err != nil {
				return err
			}
		}
	}
}

// runJob answers a job as an install that succeeds: accepted,
// installing, then succeeded with the step results a real package's
// steps report (each a few dozen bytes of name and detail).
func (a *Agent) runJob(stream grpc.BidiStreamingClient[ferryv1.ConnectRequest, ferryv1.ConnectResponse], job *ferryv1.Job) error {
	a.jobs.Add(1)
	send := func(u *ferryv1.JobUpdate) error {
		u.JobId, u.RolloutId, u.At = job.GetId(), job.GetRolloutId(), timestamppb.Now()
		a.jobUpdates.Add(1)
		return stream.Send(&ferryv1.ConnectRequest{Msg: &ferryv1.ConnectRequest_JobUpdate{JobUpdate: u}})
	}
	if err := send(&ferryv1.JobUpdate{Phase: ferryv1.JobPhase_JOB_PHASE_ACCEPTED}); err != nil {
		return err
	}
	if err := send(&ferryv1.JobUpdate{Phase: ferryv1.JobPhase_JOB_PHASE_INSTALLING}); err != nil {
		return err
	}
	steps := make([]*ferryv1.StepResult, a.cfg.JobSteps)
	kinds := []string{"archive", "env", "sudoers", "check"}
	for i := range steps {
		k := kinds[i%len(kinds)]
		steps[i] = &ferryv1.StepResult{Index: uint32(i), Kind: k, Name: fmt.Sprintf("%s -> /opt/%s/step-%d", k, job.GetPackage().GetName(), i), Changed: true,
			Detail: fmt.Sprintf("installed %s %s", job.GetPackage().GetName(), job.GetPackage().GetVersion())}
	}
	return send(&ferryv1.JobUpdate{Phase: ferryv1.JobPhase_JOB_PHASE_SUCCEEDED, Steps: steps, Message: "installed " + job.GetPackage().GetVersion()})
}

// heartbeat sends what the real agent sends: sequence, time, version,
// uptime, load, free disk and facts. Uptime is measured right before the
// send, so the controller's record of when it processed the heartbeat
// minus SentAt(uptime) is the heartbeat's processing latency.
func (a *Agent) heartbeat(stream grpc.BidiStreamingClient[ferryv1.ConnectRequest, ferryv1.ConnectResponse]) error {
	seq := a.heartbeats.Add(1)
	now := time.Now()
	hb := &ferryv1.Heartbeat{
		Seq:           uint64(seq),
		SentAt:        timestamppb.New(now),
		AgentVersion:  AgentVersion,
		Uptime:        durationpb.New(now.Sub(a.start)),
		Load1:         0.42,
		Load5:         0.37,
		Load15:        0.30,
		DiskFreeBytes: 41 << 30,
		Facts:         a.facts,
	}
	return stream.Send(&ferryv1.ConnectRequest{Msg: &ferryv1.ConnectRequest_Heartbeat{Heartbeat: hb}})
}
