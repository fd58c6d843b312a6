package controller

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrydeploy/ferry/controller/internal/gossipkey"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// What an agent is told depends on when it hears of the key: at the
// rotation it gets the whole schedule, later only what is left of it, and
// an agent that missed the whole grace switches and drops its old key at
// once.
func TestGossipKeySchedule(t *testing.T) {
	const grace = 30 * time.Second
	rotated := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	g := &gossipKeys{grace: grace}
	tests := []struct {
		name               string
		key                gossipkey.Key
		at                 time.Time
		switchIn, retireIn time.Duration
	}{
		{"the first key", gossipkey.Key{Generation: 1}, rotated, 0, 0},
		{"at the rotation", gossipkey.Key{Generation: 2, RotatedAt: rotated}, rotated, 2 * time.Second, 28 * time.Second},
		{"before the switch", gossipkey.Key{Generation: 2, RotatedAt: rotated}, rotated.Add(time.Second), time.Second, 28 * time.Second},
		{"after the switch", gossipkey.Key{Generation: 2, RotatedAt: rotated}, rotated.Add(10 * time.Second), 0, 20 * time.Second},
		{"after the grace", gossipkey.Key{Generation: 2, RotatedAt: rotated}, rotated.Add(time.Hour), 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := g.message(tt.key, tt.at)
			if got := m.GetSwitchIn().AsDuration(); got != tt.switchIn {
				t.Errorf("switch in %s, want %s", got, tt.switchIn)
			}
			if got := m.GetRetirePreviousIn().AsDuration(); got != tt.retireIn {
				t.Errorf("retire the previous key %s after the switch, want %s", got, tt.retireIn)
			}
			if m.GetGeneration() != tt.key.Generation {
				t.Errorf("generation %d, want %d", m.GetGeneration(), tt.key.Generation)
			}
		})
	}
}

// Removing a node rotates the gossip key in the same audited action: with
// the audit log failing neither happens (the key file holds the old key
// again); then both do, under one entry.
func TestNodeRemoveRotatesTheKeyOrNeither(t *testing.T) {
	c, conn := startForRawAgents(t)
	ctx := context.Background()
	tok, err := ferryv1.NewTokenServiceClient(conn).CreateToken(ctx, &ferryv1.CreateTokenRequest{Group: "staging", MaxUses: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := enroll(c, tok.Secret, "web-01"); err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(c.cfg.DataDir, "gossip.key")
	before, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	nodes := ferryv1.NewNodeServiceClient(conn)
	c.store.FailAuditWrites(errors.New("no space left on device"))
	_, err = nodes.RemoveNode(ctx, &ferryv1.RemoveNodeRequest{Id: "web-01"})
	c.store.FailAuditWrites(nil)
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("node remove with the audit log failing: %v, want Unavailable", err)
	}
	if after, _ := os.ReadFile(keyFile); c.gossipKey.Current().Generation != 1 || !bytes.Equal(after, before) {
		t.Fatalf("a removal that did not happen left the gossip key at generation %d (file changed: %v)", c.gossipKey.Current().Generation, !bytes.Equal(after, before))
	}
	if _, err := nodes.RemoveNode(ctx, &ferryv1.RemoveNodeRequest{Id: "web-01"}); err != nil {
		t.Fatal(err)
	}
	if gen := c.gossipKey.Current().Generation; gen != 2 {
		t.Errorf("after the removal the gossip key is generation %d, want 2", gen)
	}
	evs := auditEvents(t, c)
	if ev := evs[0]; ev.Action != "node.remove" || !strings.Contains(ev.Detail, "gossip key rotated to generation 2") {
		t.Errorf("newest audit entry %v, want the removal naming the new key's generation", ev)
	}
}
