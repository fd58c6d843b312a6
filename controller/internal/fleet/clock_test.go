package fleet

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ferrydeploy/ferry/controller/internal/health"
	"github.com/ferrydeploy/ferry/controller/internal/store"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// The skew an agent reports in its facts reaches the node's reason, as
// `ferryctl nodes` shows it.
func TestNodeReasonNamesClockSkew(t *testing.T) {
	st, err := store.Open(filepath.Join(t.TempDir(), "ferry.db"), store.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	r, err := New(Config{Store: st, Evaluate: health.Evaluate})
	if err != nil {
		t.Fatal(err)
	}
	r.Added(store.NodeRecord{ID: "n1", Group: "web", EnrolledAt: time.Now()})
	hello := &ferryv1.AgentHello{Facts: &ferryv1.Facts{Os: "linux", ClockSkew: durationpb.New(-10 * time.Minute)}}
	if _, err := r.Attach(context.Background(), "n1", "127.0.0.1:1", hello); err != nil {
		t.Fatal(err)
	}
	n, _ := r.Node("n1")
	if n.State != ferryv1.NodeState_NODE_STATE_HEALTHY || !strings.Contains(n.StateReason, "node clock 10m0s ahead of the controller's: fix it (NTP)") {
		t.Errorf("node n1: %s, %q; want healthy with the clock named", n.State, n.StateReason)
	}
	// A heartbeat after the clock was fixed clears it.
	r.Heartbeat("n1", &ferryv1.Heartbeat{Facts: &ferryv1.Facts{Os: "linux", ClockSkew: durationpb.New(20 * time.Millisecond)}})
	if n, _ := r.Node("n1"); strings.Contains(n.StateReason, "clock") {
		t.Errorf("after the clock was fixed, reason %q still names it", n.StateReason)
	}
}
