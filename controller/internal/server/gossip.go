package server

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrydeploy/ferry/controller/internal/store"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// GossipKeys is the gossip key the controller hands out and rotates
// (controller/controller/gossip.go).
type GossipKeys interface {
	// Current is the key as an agent connecting now applies it.
	Current() *ferryv1.GossipKey
	// Rotate replaces the key on disk, calls record with the rotation
	// (AgentsSent not set yet), and only when record succeeds starts using
	// the key and sends it to every connected agent; when record fails,
	// nothing changed.
	Rotate(record func(*ferryv1.RotateGossipKeyResponse) error) (*ferryv1.RotateGossipKeyResponse, error)
}

// gossipKey is the key for enrollments and welcomes; nil without one.
func (d *Deps) gossipKey() *ferryv1.GossipKey {
	if d.Gossip == nil {
		return nil
	}
	return d.Gossip.Current()
}

// removeNode removes a node and rotates the gossip key, so the node's copy
// stops working, as one audited action: the new key is stored first, the
// removal's audit entry (ev, written with the removal) names it, and it is
// put back if the removal fails. A key that cannot be stored does not hold
// up the removal: rotateErr says the node's copy still works.
func (d *Deps) removeNode(id, actor string, ev *ferryv1.AuditEvent) (n *ferryv1.Node, rotateErr, err error) {
	remove := func() error {
		var err error
		n, err = d.Fleet.Remove(id, actor, ev)
		return err
	}
	if d.Gossip == nil {
		return n, nil, remove()
	}
	tried := false
	_, err = d.Gossip.Rotate(func(r *ferryv1.RotateGossipKeyResponse) error {
		tried = true
		ev.Detail = fmt.Sprintf("gossip key rotated to generation %d; the node's copy stops working at %s", r.GetGeneration(), retires(r))
		return remove()
	})
	switch {
	case err == nil:
		return n, nil, nil
	case !tried: // the key could not be stored
		ev.Detail = "gossip key not rotated: " + err.Error()
		return n, err, remove()
	case n != nil: // removed, and the key stored, but not put to use
		return n, err, nil
	}
	ev.Detail = ""
	return nil, nil, err
}

// rotateGossipKey rotates the key, naming why in its audit entry, which
// is written before any agent is told the key: a rotation that cannot be
// recorded does not happen.
func (d *Deps) rotateGossipKey(ctx context.Context, why string) (*ferryv1.RotateGossipKeyResponse, error) {
	ev := d.auditEvent(ctx, "gossip.rotate-key", "", why)
	resp, err := d.Gossip.Rotate(func(r *ferryv1.RotateGossipKeyResponse) error {
		ev.Target = fmt.Sprintf("generation %d", r.GetGeneration())
		ev.Detail = fmt.Sprintf("%s; connected agents get it now, the others when they reconnect; the previous key stops working at %s", why, retires(r))
		return d.Store.AppendAudit(ev)
	})
	if err != nil {
		d.refused(ev, err)
	}
	return resp, err
}

func retires(r *ferryv1.RotateGossipKeyResponse) string {
	return r.GetPreviousKeyRetiresAt().AsTime().UTC().Format(time.RFC3339)
}

type gossipServer struct {
	ferryv1.UnimplementedGossipServiceServer
	d *Deps
}

func (s *gossipServer) RotateGossipKey(ctx context.Context, _ *ferryv1.RotateGossipKeyRequest) (*ferryv1.RotateGossipKeyResponse, error) {
	if s.d.Gossip == nil {
		return nil, status.Error(codes.Unimplemented, "this controller has no gossip key")
	}
	resp, err := s.d.rotateGossipKey(ctx, "asked for")
	switch {
	case errors.Is(err, store.ErrAudit):
		return nil, toStatus(err)
	case err != nil:
		return nil, status.Errorf(codes.Internal, "rotate the gossip key: %v; the old key stays in use, try again", err)
	}
	return resp, nil
}
