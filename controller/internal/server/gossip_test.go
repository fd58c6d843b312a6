package server

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferrydeploy/ferry/controller/internal/fleet"
	"github.com/ferrydeploy/ferry/controller/internal/health"
	"github.com/ferrydeploy/ferry/controller/internal/store"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/pki"
	"github.com/ferrydeploy/ferry/shared/rpc"
)

// fakeKeys is a gossip keyring that counts rotations and fails when told.
type fakeKeys struct {
	rotations int
	err       error
}

func (k *fakeKeys) Current() *ferryv1.GossipKey {
	return &ferryv1.GossipKey{Generation: uint64(k.rotations + 1)}
}

func (k *fakeKeys) Rotate(record func(*ferryv1.RotateGossipKeyResponse) error) (*ferryv1.RotateGossipKeyResponse, error) {
	if k.err != nil {
		return nil, k.err
	}
	resp := &ferryv1.RotateGossipKeyResponse{Generation: uint64(k.rotations + 2),
		PreviousKeyRetiresAt: timestamppb.New(time.Date(2025, 3, 1, 12, 0, 30, 0, time.UTC))}
	if err := record(resp); err != nil {
		return nil, err
	}
	k.rotations++
	resp.AgentsSent = 3
	return resp, nil
}

// Removing a node rotates the gossip key in the same audited action: the
// removal's one entry names the new generation. A key that cannot be
// stored does not hold up the removal, and the admin is told the node's
// copy still works and how to fix it.
func TestRemoveNodeRotatesGossipKey(t *testing.T) {
	tests := []struct {
		name       string
		rotateErr  error
		wantCode   codes.Code
		wantMsg    string
		wantDetail string
		rotations  int
	}{
		{"rotated", nil, codes.OK, "", "gossip key rotated to generation 2; the node's copy stops working at 2025-03-01T12:00:30Z", 1},
		{"key not stored", errors.New("disk full"), codes.Internal, "node n1 was removed, but the gossip key was not rotated (disk full), so its copy still works in gossip; run `ferryctl gossip rotate-key`", "gossip key not rotated: disk full", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, err := store.Open(filepath.Join(t.TempDir(), "ferry.db"), store.Options{Create: true})
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			if err := st.PutNode(store.NodeRecord{ID: "n1", Group: "prod"}, nil); err != nil {
				t.Fatal(err)
			}
			fl, err := fleet.New(fleet.Config{Store: st, Logger: slog.New(slog.DiscardHandler), Evaluate: health.Evaluate})
			if err != nil {
				t.Fatal(err)
			}
			keys := &fakeKeys{err: tt.rotateErr}
			d := &Deps{Store: st, Fleet: fl, Gossip: keys, Logger: slog.New(slog.DiscardHandler), Now: time.Now, streams: newStreams(nil)}
			ctx := rpc.WithCaller(context.Background(), rpc.Caller{Identity: pki.Identity{Role: pki.RoleAdmin, Name: "alice"}})

			_, err = (&nodeServer{d: d}).RemoveNode(ctx, &ferryv1.RemoveNodeRequest{Id: "n1"})
			if status.Code(err) != tt.wantCode || (tt.wantMsg != "" && status.Convert(err).Message() != tt.wantMsg) {
				t.Fatalf("RemoveNode: %v, want %s %q", err, tt.wantCode, tt.wantMsg)
			}
			if n, _ := fl.Node("n1"); n.State != ferryv1.NodeState_NODE_STATE_REMOVED {
				t.Errorf("n1 is %s, want removed whatever the rotation did", n.State)
			}
			if keys.rotations != tt.rotations {
				t.Errorf("%d rotations, want %d", keys.rotations, tt.rotations)
			}
			evs, err := st.AuditEvents(0)
			if err != nil {
				t.Fatal(err)
			}
			if len(evs) != 1 || evs[0].Action != "node.remove" || evs[0].Actor != "admin/alice" || evs[0].Outcome != "ok" || evs[0].Detail != tt.wantDetail {
				t.Fatalf("audit log %v, want one node.remove entry by admin/alice, ok, detail %q", evs, tt.wantDetail)
			}
		})
	}
}

// A rotation whose audit entry cannot be written does not happen, and the
// admin is told so.
func TestRotateGossipKeyUnrecorded(t *testing.T) {
	st, err := store.Open(filepath.Join(t.TempDir(), "ferry.db"), store.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	keys := &fakeKeys{}
	d := &Deps{Store: st, Gossip: keys, Logger: slog.New(slog.DiscardHandler), Now: time.Now}
	ctx := rpc.WithCaller(context.Background(), rpc.Caller{Identity: pki.Identity{Role: pki.RoleAdmin, Name: "alice"}})
	st.FailAuditWrites(errors.New("disk full"))
	_, err = (&gossipServer{d: d}).RotateGossipKey(ctx, &ferryv1.RotateGossipKeyRequest{})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "nothing was changed") {
		t.Fatalf("RotateGossipKey with the audit log failing: %v, want Unavailable saying nothing was changed", err)
	}
	if keys.rotations != 0 {
		t.Errorf("the key was rotated %d times without an audit entry", keys.rotations)
	}
	st.FailAuditWrites(nil)
	resp, err := (&gossipServer{d: d}).RotateGossipKey(ctx, &ferryv1.RotateGossipKeyRequest{})
	if err != nil || resp.GetGeneration() != 2 || keys.rotations != 1 {
		t.Fatalf("RotateGossipKey: %v, %v after %d rotations; want generation 2 after one", resp, err, keys.rotations)
	}
}
