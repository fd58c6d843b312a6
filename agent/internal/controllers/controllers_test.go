package controllers

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferrydeploy/ferry/shared/clocktest"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		in      []string
		want    []string
		wantErr string
	}{
		{"one", []string{"ctl:7443"}, []string{"ctl:7443"}, ""},
		{"comma-separated, as --controller a,b", []string{"a:7443, b:7443"}, []string{"a:7443", "b:7443"}, ""},
		{"a YAML list, repeats and blanks dropped", []string{"a:7443", "", "b:7443", "a:7443"}, []string{"a:7443", "b:7443"}, ""},
		{"IPv6", []string{"[2001:db8::1]:7443"}, []string{"[2001:db8::1]:7443"}, ""},
		{"no port", []string{"a:7443,ctl.example"}, nil, `controller address "ctl.example" is not HOST:PORT`},
		{"bad port", []string{"ctl:https"}, nil, `port "https" is not a number`},
		{"nothing", []string{" , "}, nil, "no controller address"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Parse(%q) = %v, %v; want an error containing %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || !slices.Equal(got, tt.want) {
				t.Fatalf("Parse(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
		})
	}
}

// fixture is a List on a fake clock whose backoff is base·2^attempt (no
// jitter, so the test reads the delays) and whose resolver answers from
// names.
type fixture struct {
	*List
	clock   *clocktest.Clock
	names   map[string][]string
	lookups int
}

const base = time.Second

func newFixture(t *testing.T, start int, entries ...string) *fixture {
	t.Helper()
	f := &fixture{clock: clocktest.New(time.Unix(1e9, 0)), names: map[string][]string{}}
	l, err := New(Config{
		Entries: entries, Start: start, Now: f.clock.Now,
		Backoff: func(attempt int) time.Duration { return min(base<<attempt, 16*base) },
		Resolve: func(_ context.Context, host string) ([]string, error) {
			f.lookups++
			if a, ok := f.names[host]; ok {
				return a, nil
			}
			return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
		},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	f.List = l
	return f
}

// attempt takes the next choice and plays it: wait out its delay on the
// fake clock, then record the outcome.
func (f *fixture) attempt(t *testing.T, established bool, hold time.Duration) (Endpoint, time.Duration) {
	t.Helper()
	e, wait := f.Next(context.Background())
	f.clock.Advance(wait)
	f.Tried(e)
	if established {
		f.Established(e)
	}
	f.Failed(e, hold)
	return e, wait
}

type step struct {
	established bool
	want        string        // Addr dialled
	wantWait    time.Duration // before dialling it
}

func TestChoice(t *testing.T) {
	tests := []struct {
		name    string
		start   int
		entries []string
		steps   []step
	}{
		{"one address backs off as the agent always did", 0, []string{"10.0.0.1:7443"}, []step{
			{false, "10.0.0.1:7443", 0},
			{false, "10.0.0.1:7443", base},
			{false, "10.0.0.1:7443", 2 * base},
			{true, "10.0.0.1:7443", 4 * base},
			{false, "10.0.0.1:7443", base}, // the established session started the count over
		}},
		{"a dropped stream moves to the next controller after a short pause", 0, []string{"a:1", "b:1", "c:1"}, []step{
			{true, "a:1", 0},
			{true, "b:1", base},
			{true, "c:1", base},
			{false, "a:1", base},
		}},
		{"the random start spreads agents", 2, []string{"a:1", "b:1", "c:1"}, []step{
			{false, "c:1", 0},
			{false, "a:1", base},
		}},
		// Each move to the other address pauses base (Backoff(0)); each
		// address waits out its own failures: a's 2nd failure holds it
		// 2s, its 3rd 4s, its 4th 8s.
		{"a dead controller is not hammered: with all down each waits out its own backoff", 0, []string{"a:1", "b:1"}, []step{
			{false, "a:1", 0},        // t=0; a may be dialled from 1s
			{false, "b:1", base},     // t=1s; b from 2s
			{false, "a:1", base},     // t=2s; a from 4s
			{false, "b:1", base},     // t=3s; b from 5s
			{false, "a:1", base},     // t=4s; a from 8s
			{false, "b:1", base},     // t=5s; b from 9s
			{false, "a:1", 3 * base}, // t=8s; a from 16s
			{false, "b:1", base},     // t=9s; b from 17s
			{false, "a:1", 7 * base}, // t=16s
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, tt.start, tt.entries...)
			f.names = map[string][]string{"a": {"10.0.1.1"}, "b": {"10.0.2.1"}, "c": {"10.0.3.1"}}
			for i, s := range tt.steps {
				e, wait := f.attempt(t, s.established, 0)
				want := s.want
				if host, port, _ := net.SplitHostPort(want); f.names[host] != nil {
					want = net.JoinHostPort(f.names[host][0], port)
				}
				if e.Addr != want || wait != s.wantWait {
					t.Errorf("attempt %d: dialled %s after %v, want %s after %v", i+1, e, wait, want, s.wantWait)
				}
			}
		})
	}
}

// The controller that held the last established session is dialled first
// whenever it may be, ahead of the turn.
func TestPrefersTheLastGood(t *testing.T) {
	f := newFixture(t, 0, "10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1")
	f.attempt(t, false, 0) // .1 fails
	e, _ := f.attempt(t, true, 0)
	if e.Addr != "10.0.0.2:1" {
		t.Fatalf("second attempt dialled %s, want 10.0.0.2:1", e)
	}
	// .2's stream dropped; .3 is next in turn but also fails.
	if e, _ := f.attempt(t, false, 0); e.Addr != "10.0.0.3:1" {
		t.Fatalf("third attempt dialled %s, want 10.0.0.3:1", e)
	}
	// Later, .1 and .2 may both be dialled: .2 worked last.
	f.clock.Advance(time.Minute)
	if e, _ := f.Next(context.Background()); e.Addr != "10.0.0.2:1" {
		t.Fatalf("with every backoff over, the choice is %s, want 10.0.0.2:1 (the last established session)", e)
	}
}

// A refusal (the node was removed, a clock to fix) holds the address for
// the longest delay even on its first failure.
func TestHold(t *testing.T) {
	f := newFixture(t, 0, "10.0.0.1:1")
	f.attempt(t, false, time.Minute)
	if _, wait := f.Next(context.Background()); wait != time.Minute {
		t.Fatalf("after a refusal the wait is %v, want the hold, 1m", wait)
	}
}

// One name with several addresses: every address is a controller of its
// own, looked up again at every choice, and one that left DNS is dropped.
func TestNameWithSeveralAddresses(t *testing.T) {
	f := newFixture(t, 0, "ctl.example:7443")
	f.names["ctl.example"] = []string{"10.0.0.1", "2001:db8::1", "not-an-ip"}
	var got []string
	for range 3 {
		e, _ := f.attempt(t, true, 0)
		if e.Entry != "ctl.example:7443" {
			t.Errorf("endpoint %v: entry %q, want ctl.example:7443", e, e.Entry)
		}
		got = append(got, e.Addr)
	}
	if want := []string{"10.0.0.1:7443", "[2001:db8::1]:7443", "10.0.0.1:7443"}; !slices.Equal(got, want) {
		t.Errorf("dialled %v, want %v", got, want)
	}
	if f.lookups != 3 {
		t.Errorf("%d lookups for 3 choices, want one at each", f.lookups)
	}
	if e := (Endpoint{Entry: "ctl.example:7443", Addr: "[2001:db8::1]:7443"}); e.String() != "ctl.example:7443 ([2001:db8::1]:7443)" {
		t.Errorf("String() = %q", e.String())
	}

	// 10.0.0.1 leaves DNS, 10.0.0.9 joins.
	f.names["ctl.example"] = []string{"10.0.0.9", "2001:db8::1"}
	f.clock.Advance(time.Minute)
	seen := map[string]bool{}
	for range 4 {
		e, _ := f.attempt(t, true, 0)
		seen[e.Addr] = true
	}
	if seen["10.0.0.1:7443"] || !seen["10.0.0.9:7443"] {
		t.Errorf("after the DNS change dialled %v, want 10.0.0.9 and never 10.0.0.1", seen)
	}
	if len(f.state) > 2 {
		t.Errorf("state kept for %d addresses, want at most the 2 resolved", len(f.state))
	}
}

// A name that does not resolve stays a candidate, dialled by name (the
// dial's error then says why), and the other controllers are still tried.
func TestUnresolvedName(t *testing.T) {
	f := newFixture(t, 0, "gone.example:7443", "10.0.0.2:7443")
	e, _ := f.attempt(t, false, 0)
	if e.Addr != "gone.example:7443" || e.Resolved() {
		t.Fatalf("first choice %v (resolved %v), want gone.example:7443 by name", e, e.Resolved())
	}
	if e, _ := f.attempt(t, true, 0); e.Addr != "10.0.0.2:7443" || !e.Resolved() {
		t.Fatalf("second choice %v, want 10.0.0.2:7443", e)
	}
}

func TestResolveReason(t *testing.T) {
	if got := resolveReason(&net.DNSError{IsNotFound: true}); got != "no such host in DNS" {
		t.Errorf("not found: %q", got)
	}
	if got := resolveReason(errors.New("boom")); got != "boom" {
		t.Errorf("other: %q", got)
	}
}
