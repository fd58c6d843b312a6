package fleet

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrydeploy/ferry/controller/internal/health"
	"github.com/ferrydeploy/ferry/controller/internal/store"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// A node's piece server is at the host its stream comes from and the port
// its hello names; a corrupt piece it served shows in its reason for
// BadPieceShownFor, its state unchanged.
func TestPeerAddrAndBadPiece(t *testing.T) {
	st, err := store.Open(filepath.Join(t.TempDir(), "ferry.db"), store.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	r, err := New(Config{Store: st, Evaluate: health.Evaluate, Now: func() time.Time { return now }, HeartbeatInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	r.Added(store.NodeRecord{ID: "n1", Group: "web", EnrolledAt: now})
	r.Added(store.NodeRecord{ID: "n2", Group: "web", EnrolledAt: now})
	if _, err := r.Attach(context.Background(), "n1", "10.0.0.7:51234", &ferryv1.AgentHello{PeerAddress: "0.0.0.0:7450"}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Attach(context.Background(), "n2", "10.0.0.8:51234", &ferryv1.AgentHello{}); err != nil {
		t.Fatal(err)
	}
	if got := r.PeerAddr("n1"); got != "10.0.0.7:7450" {
		t.Errorf("n1's piece server at %q, want 10.0.0.7:7450", got)
	}
	if got := r.PeerAddr("n2"); got != "" {
		t.Errorf("n2 serves no pieces, yet its piece server is at %q", got)
	}

	const note = "served a corrupt piece of go@1 to n2 at 2026-12-02T12:00:00Z"
	r.NoteBadPiece("n1", note)
	n, _ := r.Node("n1")
	if n.State != ferryv1.NodeState_NODE_STATE_HEALTHY || !strings.HasSuffix(n.StateReason, "; "+note) {
		t.Errorf("n1: %s, %q; want healthy, the reason ending with the note", n.State, n.StateReason)
	}
	now = now.Add(BadPieceShownFor)
	if n, _ := r.Node("n1"); strings.Contains(n.StateReason, "corrupt") {
		t.Errorf("after %s the reason still names the piece: %q", BadPieceShownFor, n.StateReason)
	}
}
