package agent

// Tests of how the agent copes with a clock that is off the controller's:
// it starts, measures the skew, reports it, and says so when a
// certificate's validity period is what breaks the connection.

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferrydeploy/ferry/shared/pki"
)

const clockDay = 24 * time.Hour

// clockStateDir is the state dir of a node enrolled now with a 30-day
// certificate, whose certificate file was written by the node's own clock
// off by received from the controller's. It returns when the controller
// issued the certificate.
func clockStateDir(t *testing.T, received time.Duration) (string, time.Time) {
	t.Helper()
	stateDir, cert := newPKI(t).enroll(t, 0, 30*clockDay)
	issued := cert.NotBefore.Add(pki.Backdate)
	at := issued.Add(received)
	if err := os.Chtimes(filepath.Join(stateDir, "node.crt"), at, at); err != nil {
		t.Fatal(err)
	}
	return stateDir, issued
}

// clockAgent builds an agent whose clock says now, logging into the
// returned buffer.
func clockAgent(t *testing.T, stateDir string, now time.Time) (*Agent, *bytes.Buffer, error) {
	t.Helper()
	var logs bytes.Buffer
	a, err := New(Config{StateDir: stateDir, Root: t.TempDir(), Now: func() time.Time { return now },
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	return a, &logs, err
}

// An agent whose clock was already 30 days ahead when it enrolled starts,
// warns about the clock, and renews two thirds into the certificate's
// lifetime by the controller's clock.
func TestClockAheadAtEnrollmentStarts(t *testing.T) {
	stateDir, issued := clockStateDir(t, 30*clockDay)
	now := issued.Add(30*clockDay + time.Minute)
	a, logs, err := clockAgent(t, stateDir, now)
	if err != nil {
		t.Fatalf("the agent refuses to start: %v", err)
	}
	if !strings.Contains(logs.String(), "this node's clock is 30 days ahead of the controller's") || !strings.Contains(logs.String(), "NTP") {
		t.Errorf("no warning about the clock; log:\n%s", logs)
	}
	renewAt := issued.Add(20 * clockDay) // by the controller's clock
	if got := now.Add(a.id.RenewIn(now)); !got.Equal(renewAt.Add(30 * clockDay)) {
		t.Errorf("renewal due at %v by the node's clock, want %v (%v by the controller's)", got, renewAt.Add(30*clockDay), renewAt)
	}
}

// An agent whose clock went back after enrollment is told to fix the
// clock, not to re-enroll.
func TestClockWentBackRefusesWithClockError(t *testing.T) {
	stateDir, issued := clockStateDir(t, 0)
	_, _, err := clockAgent(t, stateDir, issued.Add(-400*clockDay))
	if err == nil {
		t.Fatal("the agent started with a certificate issued 400 days in its future")
	}
	for _, want := range []string{"this node's clock is wrong", "at least 400 days behind", "NTP", "re-enrolling would not help"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "ferryctl token create") {
		t.Errorf("error %q tells the operator to re-enroll", err)
	}
}

// The welcome's server time gives the skew, taken at the middle of the
// round trip: it is exported as a metric and in the node's facts.
func TestMeasureSkew(t *testing.T) {
	stateDir, issued := clockStateDir(t, 0)
	now := issued.Add(time.Hour)
	a, logs, err := clockAgent(t, stateDir, now)
	if err != nil {
		t.Fatal(err)
	}
	sent, welcomed := now, now.Add(200*time.Millisecond)
	a.measureSkew(sent, welcomed, timestamppb.New(now.Add(10*clockDay+100*time.Millisecond)))
	if got := a.id.Skew(now); got != 10*clockDay {
		t.Errorf("Skew = %v, want 240h (the controller's time at the middle of the round trip)", got)
	}
	if got := gauge(t, a, "ferry_agent_clock_skew_seconds"); got != (10 * clockDay).Seconds() {
		t.Errorf("ferry_agent_clock_skew_seconds = %v, want %v", got, (10 * clockDay).Seconds())
	}
	if got := a.facts().GetClockSkew().AsDuration(); got != 10*clockDay {
		t.Errorf("facts clock_skew = %v, want 240h", got)
	}
	if !strings.Contains(logs.String(), "this node's clock is 10 days behind the controller's") {
		t.Errorf("no warning about the clock; log:\n%s", logs)
	}
	// A controller that sends no time leaves the skew alone.
	a.measureSkew(sent, welcomed, nil)
	if got := a.id.Skew(now); got != 10*clockDay {
		t.Errorf("after a welcome without a time, Skew = %v, want 240h", got)
	}
}

// gauge reads one of the agent's gauges from its registry, as /metrics
// shows it; -1 when it is not exported.
func gauge(t *testing.T, a *Agent, name string) float64 {
	t.Helper()
	families, err := a.metrics.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == name {
			return f.GetMetric()[0].GetGauge().GetValue()
		}
	}
	return -1
}

// Connection errors caused by a certificate's validity period say that a
// clock may be wrong; others get no hint.
func TestClockHint(t *testing.T) {
	stateDir, issued := clockStateDir(t, 0)
	a, _, err := clockAgent(t, stateDir, issued.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	leaf := a.id.Certificate().Leaf
	stamp := func(t time.Time) string { return t.UTC().Format(time.RFC3339) }
	for _, tc := range []struct {
		name string
		err  error
		want []string
	}{
		{
			name: "controller certificate invalid here",
			err:  status.Error(codes.Unavailable, `connection error: desc = "transport: authentication handshake failed: tls: failed to verify certificate: x509: certificate has expired or is not yet valid: current time 2031-03-14T10:00:00Z is before 2031-03-20T08:55:00Z"`),
			want: []string{"cannot verify the controller's certificate", "not yet valid at " + stamp(issued.Add(time.Hour)) + ", this node's clock (not corrected", "NTP", "restart the controller"},
		},
		{
			name: "node certificate refused there",
			err:  status.Error(codes.Unavailable, `connection error: desc = "error reading server preface: remote error: tls: expired certificate"`),
			want: []string{"the controller refused this node's certificate (valid " + stamp(leaf.NotBefore) + " to " + stamp(leaf.NotAfter) + ")", "clock", "NTP on both"},
		},
		{
			name: "bad certificate alert",
			err:  errors.New("remote error: tls: bad certificate"),
			want: []string{"refused this node's certificate", "clock"},
		},
		{name: "controller down", err: status.Error(codes.Unavailable, "connection refused")},
		{name: "no error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hint := a.clockHint(tc.err)
			if len(tc.want) == 0 && hint != "" {
				t.Errorf("hint %q for an error that is not about certificates", hint)
			}
			for _, w := range tc.want {
				if !strings.Contains(hint, w) {
					t.Errorf("hint %q does not say %q", hint, w)
				}
			}
		})
	}
}
