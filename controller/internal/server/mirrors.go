package server

import (
	"context"
	"fmt"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferrydeploy/ferry/controller/internal/mirror"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/rpc"
)

// SetMirror sets a group's site-local artifact mirror (package mirror).
func (s *artifactServer) SetMirror(ctx context.Context, req *ferryv1.SetMirrorRequest) (*ferryv1.SetMirrorResponse, error) {
	m := proto.Clone(req.GetMirror()).(*ferryv1.Mirror)
	if m == nil {
		m = &ferryv1.Mirror{}
	}
	ev := s.d.auditEvent(ctx, "mirror.set", "group/"+m.GetGroup(), "")
	if err := mirror.Normalize(m); err != nil {
		s.d.refused(ev, err)
		return nil, toStatus(err)
	}
	ev.Detail = fmt.Sprintf("url=%s layout=%s ca_bundle=%v", m.UrlPrefix, mirror.LayoutName(m.Layout), len(m.CaBundle) > 0)
	if old, err := s.d.Store.Mirror(m.Group); err == nil && old.UrlPrefix == m.UrlPrefix && old.Layout == m.Layout && string(old.CaBundle) == string(m.CaBundle) {
		if err := s.d.unchanged(ev); err != nil {
			return nil, toStatus(err)
		}
		return &ferryv1.SetMirrorResponse{Mirror: old}, nil
	}
	m.SetBy, m.SetAt = rpc.CallerName(ctx), timestamppb.New(s.d.Now())
	if err := s.d.Store.PutMirror(m, ev); err != nil {
		return nil, toStatus(err)
	}
	s.log.Info("mirror set", "group", m.Group, "url", m.UrlPrefix, "layout", mirror.LayoutName(m.Layout), "by", m.SetBy)
	return &ferryv1.SetMirrorResponse{Mirror: m, Changed: true}, nil
}

// ListMirrors lists the mirrors, by group.
func (s *artifactServer) ListMirrors(ctx context.Context, _ *ferryv1.ListMirrorsRequest) (*ferryv1.ListMirrorsResponse, error) {
	ms, err := s.d.Store.Mirrors()
	if err != nil {
		return nil, toStatus(err)
	}
	return &ferryv1.ListMirrorsResponse{Mirrors: ms}, nil
}

// DeleteMirror removes a group's mirror: its agents fetch from the
// controller alone again.
func (s *artifactServer) DeleteMirror(ctx context.Context, req *ferryv1.DeleteMirrorRequest) (*ferryv1.DeleteMirrorResponse, error) {
	ev := s.d.auditEvent(ctx, "mirror.rm", "group/"+req.GetGroup(), "")
	m, err := s.d.Store.DeleteMirror(req.GetGroup(), ev)
	if err != nil {
		err = fmt.Errorf("group %q has no mirror (see `ferryctl mirror list`): %w", req.GetGroup(), err)
		s.d.refused(ev, err)
		return nil, toStatus(err)
	}
	s.log.Info("mirror removed", "group", m.Group, "url", m.UrlPrefix, "by", rpc.CallerName(ctx))
	return &ferryv1.DeleteMirrorResponse{Mirror: m}, nil
}
