package agent

import (
	"crypto/x509"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrydeploy/ferry/agent/internal/backoff"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/clocktest"
	"github.com/ferrydeploy/ferry/shared/pki"
)

// outcome is what happens to one of the agent's streams.
type outcome struct {
	welcome bool          // the controller answered the hello before the stream ended
	lasted  time.Duration // by the agent's clock
	code    codes.Code    // how the stream ended
}

// Messages as the controller words them.
var endedWith = map[codes.Code]string{
	codes.Unavailable:      "controller is shutting down",
	codes.PermissionDenied: "node n1 was removed by admin/alice; to bring it back, create a token and re-enroll it",
	codes.Unauthenticated:  "certificate 12345 is no longer valid for node n1 (replaced by a renewal or re-enrollment)",
}

func (o outcome) play(clock *clocktest.Clock, s *agentStream) error {
	if o.welcome {
		if err := s.welcome(); err != nil {
			return err
		}
		// The agent heartbeats once it has the welcome: from then on, by
		// its clock, the stream is up.
		for {
			m, err := s.stream.Recv()
			if err != nil {
				return err
			}
			if m.GetHeartbeat() != nil {
				break
			}
		}
	}
	clock.Advance(o.lasted)
	return status.Error(o.code, endedWith[o.code])
}

func repeat(o outcome, n int) []outcome {
	out := make([]outcome, n)
	for i := range out {
		out[i] = o
	}
	return out
}

// counter reads one of the agent's counters as /metrics shows it.
func (ta *testAgent) counter(name string) float64 {
	ta.t.Helper()
	families, err := ta.metrics.reg.Gather()
	if err != nil {
		ta.t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == name {
			return f.GetMetric()[0].GetCounter().GetValue()
		}
	}
	ta.t.Fatalf("metric %s is not exported", name)
	return 0
}

// After each failed stream the agent waits before it redials: full jitter
// under a ceiling that doubles per failure up to BackoffMax, the count
// starting over after an established session (welcomed, then up for
// backoff.MinSession), and the longest delay when the controller refuses
// the node itself.
func TestReconnectDelays(t *testing.T) {
	const base, maxDelay = time.Second, 10 * time.Second // the test agent's BackoffBase, BackoffMax
	// highest is the delay the highest jitter draw gives under a ceiling.
	highest := func(ceil time.Duration) time.Duration { return ceil + base/2 - time.Nanosecond }
	down := outcome{code: codes.Unavailable}
	removed := outcome{code: codes.PermissionDenied}
	refusedCert := outcome{code: codes.Unauthenticated}
	tests := []struct {
		name     string
		draw     constSource
		outcomes []outcome
		want     []time.Duration
		wantLog  string // an error or warning logged with the retries
	}{
		{"each failure doubles the ceiling up to BackoffMax", highDraw, repeat(down, 6),
			[]time.Duration{highest(base), highest(2 * base), highest(4 * base), highest(8 * base), highest(maxDelay), highest(maxDelay)},
			"stream to controller ended"},
		{"the lowest draw waits half the base", lowDraw, repeat(down, 4),
			[]time.Duration{base / 2, base / 2, base / 2, base / 2}, "controller is shutting down"},
		{"an established session starts the count over", highDraw,
			[]outcome{down, down, {welcome: true, lasted: 3 * time.Second, code: codes.Unavailable}, down},
			[]time.Duration{highest(base), highest(2 * base), highest(base), highest(2 * base)}, ""},
		{"a stream up for exactly MinSession after its welcome is established", highDraw,
			[]outcome{down, {welcome: true, lasted: backoff.MinSession, code: codes.Unavailable}, down},
			[]time.Duration{highest(base), highest(base), highest(2 * base)}, ""},
		{"a stream dropped right after its welcome counts as a failure", highDraw,
			[]outcome{down, {welcome: true, code: codes.Unavailable}, {welcome: true, lasted: backoff.MinSession - time.Millisecond, code: codes.Unavailable}, down},
			[]time.Duration{highest(base), highest(2 * base), highest(4 * base), highest(8 * base)}, ""},
		{"an attempt without a welcome never starts the count over, however long", highDraw,
			[]outcome{down, {lasted: 2 * time.Minute, code: codes.Unavailable}},
			[]time.Duration{highest(base), highest(2 * base)}, ""},
		{"a removed node waits the longest delay, and keeps trying", lowDraw, repeat(removed, 3),
			[]time.Duration{maxDelay, maxDelay, maxDelay},
			"controller refused this node; it must be re-enrolled if it was removed"},
		{"a refused certificate waits the longest delay", lowDraw, []outcome{refusedCert},
			[]time.Duration{maxDelay}, "no longer valid for node n1"},
		{"refusals count as attempts", highDraw, []outcome{removed, removed, down},
			[]time.Duration{maxDelay, maxDelay, highest(4 * base)}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ta *testAgent
			ta = newTestAgent(t, agentOptions{rand: tt.draw, script: func(s *agentStream) error {
				if s.n >= len(tt.outcomes) {
					return status.Error(codes.Internal, "the test did not expect another stream")
				}
				return tt.outcomes[s.n].play(ta.clock, s)
			}})
			ta.run()
			for i, want := range tt.want {
				if got := ta.nextWait(); got != want {
					t.Errorf("wait after stream %d: %v, want %v", i+1, got, want)
				}
				if i < len(tt.want)-1 {
					ta.redial()
				}
			}
			if got := ta.counter("ferry_agent_stream_reconnects_total"); got != float64(len(tt.want)) {
				t.Errorf("ferry_agent_stream_reconnects_total = %v, want %d", got, len(tt.want))
			}
			if tt.wantLog != "" {
				level := "WARN"
				if tt.outcomes[0].code != codes.Unavailable {
					level = "ERROR"
				}
				line := ta.logs.wait(t, level, tt.wantLog)
				if !strings.Contains(line, "retry_in=") {
					t.Errorf("log line %q does not say when the agent retries", line)
				}
			}
		})
	}
}

// A link that drops the stream every 3 to 8 seconds (the controller is
// fine) costs the agent only the shortest reconnect delays, fully
// jittered, however long it goes on: each session was established.
func TestFlappingLinkKeepsDelaysShort(t *testing.T) {
	const base = time.Second // the test agent's BackoffBase
	var flaps []outcome
	for i := range 30 {
		flaps = append(flaps, outcome{welcome: true, lasted: time.Duration(3000+i*1733%5000) * time.Millisecond, code: codes.Unavailable})
	}
	var ta *testAgent
	ta = newTestAgent(t, agentOptions{script: func(s *agentStream) error {
		if s.n >= len(flaps) {
			return status.Error(codes.Internal, "the test did not expect another stream")
		}
		return flaps[s.n].play(ta.clock, s)
	}})
	ta.run()
	lo, hi := time.Duration(1<<62), time.Duration(0)
	for i := range flaps {
		d := ta.nextWait()
		lo, hi = min(lo, d), max(hi, d)
		if d < base/2 || d >= base+base/2 {
			t.Errorf("wait after flap %d: %v, want within [%v, %v)", i+1, d, base/2, base+base/2)
		}
		if i < len(flaps)-1 {
			ta.redial()
		}
	}
	// Full jitter: a fleet on the same flapping switch does not redial in
	// step.
	if hi-lo < base/2 {
		t.Errorf("waits in [%v, %v]: not spread over [%v, %v)", lo, hi, base/2, base+base/2)
	}
}

// A certificate past its expiry ends the agent with an error that says how
// to come back (re-enroll), instead of a reconnect loop that cannot
// succeed.
func TestExpiredCertificateStopsTheAgent(t *testing.T) {
	wantErr := func(cert *x509.Certificate, stateDir string) string {
		return fmt.Sprintf("the node certificate expired at %s (the node was offline past its renewal window); re-enroll: get a token with `ferryctl token create --group prod`, remove %s and run `ferry-agent enroll` again",
			cert.NotAfter.UTC().Format(time.RFC3339), stateDir)
	}

	t.Run("at start", func(t *testing.T) {
		p := newPKI(t)
		stateDir, cert := p.enroll(t, 0, time.Hour)
		later := cert.NotAfter.Add(time.Second)
		_, err := New(Config{StateDir: stateDir, Root: t.TempDir(), Now: func() time.Time { return later }})
		if want := wantErr(cert, stateDir); err == nil || err.Error() != want {
			t.Fatalf("New: %v\nwant: %s", err, want)
		}
	})

	refuse := func(s *agentStream) error { return status.Error(codes.Unauthenticated, "certificate expired") }
	tests := []struct {
		name   string
		script func(s *agentStream) error // nil: the stream is up
	}{
		{"while waiting to reconnect", refuse},
		{"while connected", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ta := newTestAgent(t, agentOptions{script: tt.script})
			var renewals atomic.Int32
			ta.ctl.renew = func(*ferryv1.RenewCertificateRequest) (*ferryv1.RenewCertificateResponse, error) {
				renewals.Add(1)
				return nil, status.Error(codes.Unauthenticated, "certificate expired")
			}
			ta.clock.Advance(2 * time.Hour) // the node was suspended past its certificate's expiry
			ta.run()
			err := ta.result()
			if want := wantErr(ta.cert, ta.cfg.StateDir); err == nil || err.Error() != want {
				t.Fatalf("Run: %v\nwant: %s", err, want)
			}
			if renewals.Load() == 0 {
				t.Error("the agent gave up without trying to renew")
			}
		})
	}
}

// A renewed certificate is used for new calls at once, while the stream
// already open carries on.
func TestRenewalSwitchesNewCallsToTheNewCertificate(t *testing.T) {
	// Issued 45 minutes ago, valid for an hour: past the two thirds at
	// which the agent renews.
	ta := newTestAgent(t, agentOptions{certAge: 45 * time.Minute})
	var renewed atomic.Pointer[x509.Certificate]
	ta.ctl.renew = func(req *ferryv1.RenewCertificateRequest) (*ferryv1.RenewCertificateResponse, error) {
		csr, err := pki.ParseCSR(req.GetCsrDer())
		if err != nil {
			return nil, err
		}
		cert, err := ta.pki.ca.Sign(pki.SignRequest{Identity: pki.Identity{Role: pki.RoleAgent, Name: "n1"}, PublicKey: csr.PublicKey, TTL: time.Hour, Now: time.Now()})
		if err != nil {
			return nil, err
		}
		renewed.Store(cert)
		return &ferryv1.RenewCertificateResponse{CertificateDer: cert.Raw}, nil
	}
	ta.run()
	first := ta.stream()
	ta.logs.wait(t, "INFO", "new calls use the renewed certificate")

	first.send(t, jobMsg(fileJob("j1", "/etc/motd", "renewed\n")))
	if u := first.result(t, "j1"); u.GetPhase() != ferryv1.JobPhase_JOB_PHASE_SUCCEEDED {
		t.Errorf("job on the stream opened before the renewal: %s %q, want succeeded", u.GetPhase(), u.GetMessage())
	}
	first.end <- status.Error(codes.Unavailable, "controller is shutting down")
	ta.nextWait()
	ta.redial()
	second := ta.stream()

	cert := renewed.Load()
	if first.cert.SerialNumber.Cmp(ta.cert.SerialNumber) != 0 {
		t.Errorf("the first stream presented certificate %v, want the enrolled %v", first.cert.SerialNumber, ta.cert.SerialNumber)
	}
	if second.cert.SerialNumber.Cmp(cert.SerialNumber) != 0 {
		t.Errorf("the stream after the renewal presented certificate %v, want the renewed %v", second.cert.SerialNumber, cert.SerialNumber)
	}
}
