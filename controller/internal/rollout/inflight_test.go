// Tests of jobs in flight: the progress deadline and the healthy period
// (inflight.go).

package rollout

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

func TestProgressDeadline(t *testing.T) {
	tests := []struct {
		name    string
		down    bool
		want    ferryv1.NodeOutcome
		wantMsg string
	}{
		{"silent but connected node fails", false, ocFailed, "no result within the progress deadline 1m0s; job cancelled"},
		{"node that went down is unreachable", true, ocUnreachable, "node went away mid-job (down, not connected"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, 4)
			r := h.create(strat{canary: 1, auto: true, parallel: "2", failures: "0", deadline: time.Minute, healthy: time.Second})
			h.succeed(r.Id, "n00")
			h.tick(time.Second) // n01, n02 start
			h.report(r.Id, "n01", phInstalling, "")
			if tt.down {
				h.fleet.setState("n01", ferryv1.NodeState_NODE_STATE_DOWN, false)
			}
			h.tick(59 * time.Second)
			if got := h.outcome(r.Id, "n01"); got != ocInstalling {
				t.Fatalf("before the deadline n01 = %v, want still installing (never given up early)", got)
			}
			h.succeed(r.Id, "n02")
			h.tick(time.Second)
			h.tick(time.Second)
			cur := h.get(r.Id)
			n := nodeOf(cur, "n01")
			if n.Outcome != tt.want || !strings.Contains(n.Message, tt.wantMsg) {
				t.Fatalf("n01 = %v %q, want %v %q", n.Outcome, n.Message, tt.want, tt.wantMsg)
			}
			if c := h.disp.cancelled(); len(c) != 1 || c[0].jobID != r.Id+"/job/n01" {
				t.Errorf("cancels = %v", c)
			}
			// Given up mid-job, either way it counts against max-failures 0.
			if cur.State != stPaused || outcomes(cur)["n02"] != ocSucceeded || outcomes(cur)["n03"] != ocPending {
				t.Errorf("state = %v %v, want paused before n03 started", cur.State, outcomes(cur))
			}
			// A late report does not change a final outcome.
			h.succeed(r.Id, "n01")
			if got := h.outcome(r.Id, "n01"); got != tt.want {
				t.Errorf("after a late success n01 = %v", got)
			}
		})
	}
}

func TestHealthyForNeedsUnbrokenHeartbeats(t *testing.T) {
	h := newHarness(t, 2)
	r := h.create(strat{canary: 1, healthy: 10 * time.Second})
	h.succeed(r.Id, "n00")
	h.tick(6 * time.Second)
	h.fleet.setState("n00", ferryv1.NodeState_NODE_STATE_STALE, true)
	h.tick(3 * time.Second)
	h.fleet.setState("n00", ferryv1.NodeState_NODE_STATE_HEALTHY, true)
	h.tick(time.Second) // healthy again at t=10s: the period restarts here
	h.tick(5 * time.Second)
	if got := h.outcome(r.Id, "n00"); got != ocChecking {
		t.Fatalf("15s after success with a stale gap = %v, want still checking", got)
	}
	h.tick(5 * time.Second)
	n := nodeOf(h.get(r.Id), "n00")
	if n.Outcome != ocSucceeded || !strings.Contains(n.Message, "healthy for 10s") {
		t.Fatalf("n00 = %v %q, want succeeded after 10s of heartbeats", n.Outcome, n.Message)
	}
}

// The healthy period tolerates reconnects that keep heartbeats flowing: a
// stream that drops every 4 s and is back a second later does not restart
// it. Heartbeats that stop for more than two intervals (10 s) do, whatever
// the stream does.
func TestHealthyForAcrossReconnects(t *testing.T) {
	const healthyFor = 10 * time.Second
	type change struct {
		at   time.Duration // after the agent's report
		drop bool          // the stream drops; else it is back
	}
	var flapping []change
	for at := 3 * time.Second; at < 20*time.Second; at += 4 * time.Second {
		flapping = append(flapping, change{at, true}, change{at + time.Second, false})
	}
	silent := []change{{3 * time.Second, true}, {14500 * time.Millisecond, false}}
	tests := []struct {
		name    string
		changes []change
		at      time.Duration // when the outcome is read
		want    ferryv1.NodeOutcome
	}{
		{"dropped every 4 s, back within a second: not yet at 9.5 s", flapping, 9500 * time.Millisecond, ocChecking},
		{"dropped every 4 s, back within a second: done by 10.5 s", flapping, 10500 * time.Millisecond, ocSucceeded},
		{"silent for 11.5 s: not done at 20 s", silent, 20 * time.Second, ocChecking},
		{"silent for 11.5 s: done 10 s after it is back", silent, 25 * time.Second, ocSucceeded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, 2)
			r := h.create(strat{canary: 1, healthy: healthyFor})
			h.succeed(r.Id, "n00")
			changes := tt.changes
			for el := 500 * time.Millisecond; el <= tt.at; el += 500 * time.Millisecond {
				h.clock.Advance(500 * time.Millisecond)
				for len(changes) > 0 && changes[0].at <= el {
					if changes[0].drop {
						h.fleet.setState("n00", ferryv1.NodeState_NODE_STATE_UNREACHABLE, false) // gossip alive
					} else {
						h.fleet.setState("n00", ferryv1.NodeState_NODE_STATE_HEALTHY, true)
					}
					changes = changes[1:]
				}
				h.e.Tick(h.clock.Now())
			}
			n := nodeOf(h.get(r.Id), "n00")
			if n.Outcome != tt.want {
				t.Fatalf("n00 %v after the report = %v %q, want %v", tt.at, n.Outcome, n.Message, tt.want)
			}
			if tt.want == ocSucceeded && !strings.Contains(n.Message, "healthy for 10s") {
				t.Errorf("n00 message %q, want it to name the healthy period", n.Message)
			}
		})
	}
}

func TestHealthyForWaitsForAHeartbeatAfterThePeriod(t *testing.T) {
	h := newHarness(t, 1)
	r := h.create(strat{canary: 1, healthy: 10 * time.Second})
	h.succeed(r.Id, "n00")
	// A fleet that reports an old heartbeat: the period has passed, but no
	// heartbeat arrived after it.
	h.fleet.mu.Lock()
	h.fleet.nodes["n00"].State = ferryv1.NodeState_NODE_STATE_HEALTHY
	h.fleet.mu.Unlock()
	stale := &staleHeartbeatFleet{fakeFleet: h.fleet, at: h.clock.Now().Add(5 * time.Second)}
	h.e.cfg.Fleet = stale
	h.tick(11 * time.Second)
	if got := h.outcome(r.Id, "n00"); got != ocChecking {
		t.Fatalf("with the last heartbeat inside the period n00 = %v, want checking", got)
	}
	stale.at = h.clock.Now()
	h.tick(time.Second)
	if got := h.outcome(r.Id, "n00"); got != ocSucceeded {
		t.Fatalf("after a fresh heartbeat n00 = %v, want succeeded", got)
	}
}

type staleHeartbeatFleet struct {
	*fakeFleet
	at time.Time
}

func (f *staleHeartbeatFleet) Node(id string) (*ferryv1.Node, bool) {
	n, ok := f.fakeFleet.Node(id)
	if ok {
		n.LastHeartbeat = timestamppb.New(f.at)
	}
	return n, ok
}

// With healthy-for 0 the job report is the sign of life: on a clock that
// never moves and with no Tick, every node of a one-slot window succeeds
// on its report (its last heartbeat came before it), the next starts at
// once, and the rollout ends with the last report. A wait for a heartbeat
// or a tick would leave the first node checking.
func TestHealthyForZeroSucceedsOnTheReport(t *testing.T) {
	h := newHarness(t, 3)
	h.e.cfg.Fleet = &staleHeartbeatFleet{fakeFleet: h.fleet, at: h.clock.Now().Add(-time.Second)}
	r := h.create(strat{noCanary: true, parallel: "1", healthyZero: true})
	for i, id := range []string{"n00", "n01", "n02"} {
		if sent := h.sentTo(r.Id); len(sent) != i+1 || sent[i] != id {
			t.Fatalf("before %s's report jobs went to %v, want n00..%s one at a time", id, sent, id)
		}
		h.succeed(r.Id, id)
		if got := h.outcome(r.Id, id); got != ocSucceeded {
			t.Fatalf("%s after its report = %v, want succeeded without a heartbeat or tick", id, got)
		}
	}
	if got := h.state(r.Id); got != stSucceeded {
		t.Fatalf("rollout after the last report = %v, want succeeded", got)
	}
}

// A node waiting out a healthy period succeeds on the heartbeat that ends
// it (NodeHeartbeat), and the window moves on, without a Tick.
func TestHeartbeatEndsTheHealthyPeriod(t *testing.T) {
	h := newHarness(t, 2)
	stale := &staleHeartbeatFleet{fakeFleet: h.fleet, at: h.clock.Now()}
	h.e.cfg.Fleet = stale
	r := h.create(strat{noCanary: true, parallel: "1", healthy: 10 * time.Second})
	h.succeed(r.Id, "n00")
	h.clock.Advance(5 * time.Second)
	stale.at = h.clock.Now()
	h.e.NodeHeartbeat("n00")
	if got := h.outcome(r.Id, "n00"); got != ocChecking {
		t.Fatalf("after a heartbeat within the period n00 = %v, want checking", got)
	}
	h.clock.Advance(6 * time.Second)
	h.e.NodeHeartbeat("n01") // not waiting: changes nothing
	if got := h.outcome(r.Id, "n00"); got != ocChecking {
		t.Fatalf("after another node's heartbeat n00 = %v, want checking", got)
	}
	stale.at = h.clock.Now()
	h.e.NodeHeartbeat("n00")
	if got := h.outcome(r.Id, "n00"); got != ocSucceeded {
		t.Fatalf("after the heartbeat that ends the period n00 = %v, want succeeded", got)
	}
	if sent := h.sentTo(r.Id); len(sent) != 2 || sent[1] != "n01" {
		t.Fatalf("jobs went to %v, want n01 started when n00's slot freed", sent)
	}
}
