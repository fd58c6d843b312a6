package fleettest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrydeploy/ferry/agent/internal/agent"
	"github.com/ferrydeploy/ferry/controller/controller"
)

// An agent whose clock was already ahead when it enrolled (by more than its
// certificate's lifetime) starts, reports its skew, which `ferryctl nodes`
// shows in the node's reason, and renews by the controller's clock,
// staying connected.
func TestAgentClockAheadOfController(t *testing.T) {
	const ahead = 3 * time.Minute
	f := newFleet(t, func(c *controller.Config) { c.AgentCertTTL = 6 * time.Second })
	a := f.enroll("n1", f.token("staging", 1))
	certPath := filepath.Join(a.stateDir, "node.crt")
	// What enrolling with the clock ahead would have written.
	if err := os.Chtimes(certPath, time.Now().Add(ahead), time.Now().Add(ahead)); err != nil {
		t.Fatal(err)
	}
	f.startWith(a, func(c *agent.Config) { c.Now = func() time.Time { return time.Now().Add(ahead) } })
	f.waitState("n1", healthy, 5*time.Second)

	deadline := time.Now().Add(5 * time.Second)
	for {
		n := f.node("n1")
		skew := n.GetFacts().GetClockSkew().AsDuration()
		if (skew+ahead).Abs() < time.Second && strings.Contains(n.StateReason, "node clock 3m0s ahead of the controller's: fix it (NTP)") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("n1 reports a skew of %v, reason %q; want -3m0s and the clock named", skew, n.StateReason)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// The certificate (6s) is renewed two thirds into its lifetime by the
	// controller's clock: by the agent's own clock it expired on arrival.
	first, _ := os.ReadFile(certPath)
	deadline = time.Now().Add(15 * time.Second)
	renewals := 0
	for last := first; renewals < 2; {
		if pem, _ := os.ReadFile(certPath); len(pem) > 0 && string(pem) != string(last) {
			renewals++
			last = pem
		}
		// Connected, not healthy: on a loaded machine a heartbeat can be
		// late, which is not what this test is about.
		if n := f.node("n1"); !n.Connected {
			t.Fatalf("n1 lost its stream during renewals: %s, %s", n.State, n.StateReason)
		}
		if time.Now().After(deadline) {
			t.Fatalf("saw %d renewals in 15s, want 2", renewals)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
