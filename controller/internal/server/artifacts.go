package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrydeploy/ferry/controller/internal/artifact"
	"github.com/ferrydeploy/ferry/controller/internal/importer"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/rpc"
	"github.com/ferrydeploy/ferry/shared/sha256digest"
)

// artifactServer is the ArtifactService admins push to, on the artifact
// store.
type artifactServer struct {
	ferryv1.UnimplementedArtifactServiceServer
	d   *Deps
	log *slog.Logger
}

// PushArtifact receives a header, then chunks, and stores the artifact.
func (s *artifactServer) PushArtifact(stream grpc.ClientStreamingServer[ferryv1.PushArtifactRequest, ferryv1.PushArtifactResponse]) error {
	ctx := stream.Context()
	first, err := stream.Recv()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return status.Error(codes.InvalidArgument, "empty push: send the header first")
		}
		return err
	}
	h := first.GetHeader()
	if h == nil {
		return status.Error(codes.InvalidArgument, "the first message of a push must be the header (name, version, size, sha256)")
	}
	actor := rpc.CallerName(ctx)
	target := h.GetName() + "@" + h.GetVersion()
	ev := s.d.auditEvent(ctx, "artifact.push", target, "")
	audit := func(a *ferryv1.Artifact, p artifact.Pushed) *ferryv1.AuditEvent {
		ev.Detail = fmt.Sprintf("digest=%s size=%d created=%v", a.Digest, a.Size, p != artifact.Unchanged)
		if p == artifact.Restored {
			ev.Detail += " restored=true"
		}
		return ev
	}
	req := artifact.PutRequest{
		Name: h.GetName(), Version: h.GetVersion(), OS: h.GetOs(), Arch: h.GetArch(), Size: h.GetSize(), SHA256: h.GetSha256(), PushedBy: actor,
		Audit: audit,
	}
	a, pushed, err := s.d.Artifacts.Put(ctx, req, pushChunks(stream))
	if err == nil && pushed == artifact.Unchanged {
		err = s.d.unchanged(audit(a, pushed))
	}
	if err != nil {
		s.log.Info("artifact push refused", "artifact", target, "by", actor, "err", err)
		ev.Detail = ""
		s.d.refused(ev, err)
		return toStatus(err)
	}
	created, restored := pushed != artifact.Unchanged, pushed == artifact.Restored
	s.log.Info("artifact pushed", "artifact", target, "digest", a.Digest, "size", a.Size, "created", created, "restored", restored, "by", actor)
	resp := &ferryv1.PushArtifactResponse{Artifact: a, Created: created, Restored: restored}
	// Pushing the same bytes again copies them too: it repairs a copy lost.
	s.d.replicate(ctx, resp)
	return stream.SendAndClose(resp)
}

// chunkReader reads a client stream's chunks, one message at a time
// (next), as an artifact.ChunkSource: pushes and replications.
type chunkReader struct {
	next func() ([]byte, error)
	rest []byte
}

func (r *chunkReader) Read(p []byte) (int, error) {
	for len(r.rest) == 0 {
		b, err := r.next()
		if err != nil {
			return 0, err
		}
		r.rest = b
	}
	n := copy(p, r.rest)
	r.rest = r.rest[n:]
	return n, nil
}

func (r *chunkReader) CopyChunks(w io.Writer) error {
	for {
		b, err := r.next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if _, err := w.Write(b); err != nil {
			return err
		}
	}
}

// pushChunks reads the chunks of a push stream after its header.
func pushChunks(stream grpc.ClientStreamingServer[ferryv1.PushArtifactRequest, ferryv1.PushArtifactResponse]) *chunkReader {
	var msg ferryv1.PushArtifactRequest
	return &chunkReader{next: func() ([]byte, error) {
		// RecvMsg does not see the stream's context end when the pusher's
		// credential is revoked (streams.go); the push stops here.
		if ctx := stream.Context(); ctx.Err() != nil {
			return nil, context.Cause(ctx)
		}
		msg.Reset()
		if err := stream.RecvMsg(&msg); err != nil {
			return nil, err
		}
		if msg.GetHeader() != nil {
			return nil, status.Error(codes.InvalidArgument, "a push carries one header, in its first message")
		}
		return msg.GetChunk(), nil
	}}
}

// ListArtifacts lists artifacts, newest first.
func (s *artifactServer) ListArtifacts(ctx context.Context, req *ferryv1.ListArtifactsRequest) (*ferryv1.ListArtifactsResponse, error) {
	as, err := s.d.Artifacts.List(req.GetName())
	if err != nil {
		return nil, toStatus(err)
	}
	return &ferryv1.ListArtifactsResponse{Artifacts: as}, nil
}

// GetArtifact returns one artifact and the packages that use it.
func (s *artifactServer) GetArtifact(ctx context.Context, req *ferryv1.GetArtifactRequest) (*ferryv1.GetArtifactResponse, error) {
	a, err := s.d.Artifacts.Resolve(req.GetRef())
	if err != nil {
		return nil, toStatus(err)
	}
	refs, err := s.d.Artifacts.ReferencedBy(a.Digest)
	if err != nil {
		return nil, toStatus(err)
	}
	return &ferryv1.GetArtifactResponse{Artifact: a, ReferencedBy: refs}, nil
}

// DeleteArtifact removes an artifact no package references.
func (s *artifactServer) DeleteArtifact(ctx context.Context, req *ferryv1.DeleteArtifactRequest) (*ferryv1.DeleteArtifactResponse, error) {
	ev := s.d.auditEvent(ctx, "artifact.rm", req.GetRef(), "")
	a, err := s.d.Artifacts.Delete(req.GetRef(), func(a *ferryv1.Artifact) *ferryv1.AuditEvent {
		ev.Target, ev.Detail = artifact.Key(a), "digest="+a.Digest
		return ev
	})
	if err != nil {
		s.d.refused(ev, err)
		return nil, toStatus(err)
	}
	s.log.Info("artifact removed", "artifact", ev.Target, "digest", a.Digest)
	return &ferryv1.DeleteArtifactResponse{Artifact: a}, nil
}

// VerifyArtifacts hashes the stored blobs of one artifact, or of all,
// again and streams each artifact's check as it is done.
func (s *artifactServer) VerifyArtifacts(req *ferryv1.VerifyArtifactsRequest, stream grpc.ServerStreamingServer[ferryv1.VerifyArtifactsResponse]) error {
	ctx := stream.Context()
	ref, target := strings.TrimSpace(req.GetRef()), strings.TrimSpace(req.GetRef())
	switch {
	case ref == "" && !req.GetAll():
		return status.Error(codes.InvalidArgument, "name the artifact to verify (NAME@VERSION or sha256:PREFIX), or verify all of them with --all")
	case ref != "" && req.GetAll():
		return status.Error(codes.InvalidArgument, "name one artifact to verify or ask for all of them, not both")
	case req.GetAll():
		target = "all"
	}
	checked := 0
	var bad []string
	err := s.d.Artifacts.Verify(ctx, ref, func(c artifact.Check) error {
		checked++
		if c.Damaged() {
			bad = append(bad, artifact.Key(c.Artifact))
		}
		resp := &ferryv1.VerifyArtifactsResponse{Artifact: c.Artifact, GotDigest: c.Got}
		if c.Err != nil {
			resp.Error = c.Err.Error()
		}
		return stream.Send(resp)
	})
	detail := fmt.Sprintf("checked=%d damaged=%d", checked, len(bad))
	if len(bad) > 0 {
		detail += " (" + strings.Join(bad, ", ") + ")"
	}
	// What the checks recorded (damaged, ok again) is the controller's own
	// finding, which it also makes without an admin (reports, the check
	// after start); the entry says who asked and what was found.
	ev := s.d.auditEvent(ctx, "artifact.verify", target, detail)
	if err != nil {
		s.d.refused(ev, err)
		return toStatus(err)
	}
	if err := s.d.unchanged(ev); err != nil {
		return toStatus(err)
	}
	s.log.Info("artifacts verified", "target", target, "checked", checked, "damaged", len(bad), "by", rpc.CallerName(ctx))
	return nil
}

// ReportArtifactMismatch hears a node whose download of one of its jobs'
// artifacts did not hash to the digest. The node is not trusted: the
// artifact store hashes its own copy (at most once per recheck interval
// per blob) and quarantines it only when that copy is damaged too.
func (s *agentServer) ReportArtifactMismatch(ctx context.Context, req *ferryv1.ReportArtifactMismatchRequest) (*ferryv1.ReportArtifactMismatchResponse, error) {
	c, err := agentID(ctx)
	if err != nil {
		return nil, err
	}
	if s.d.Artifacts == nil {
		return nil, status.Error(codes.Unimplemented, "this controller has no artifact store")
	}
	// A node speaks only of what it may download: its own jobs' artifacts.
	if err := s.mayFetch(c.Identity.Name, req.GetDigest()); err != nil {
		return nil, err
	}
	got := req.GetGotDigest()
	if _, err := sha256digest.Parse(got); err != nil {
		got = "" // only ever logged, and only when it is a digest
	}
	check, err := s.d.Artifacts.ReportMismatch(ctx, req.GetDigest(), got, c.Identity.Name)
	if err != nil {
		return nil, toStatus(err)
	}
	if err := artifact.Quarantined(check.Artifact); err != nil {
		return &ferryv1.ReportArtifactMismatchResponse{Damaged: true, Message: err.Error()}, nil
	}
	a := check.Artifact
	return &ferryv1.ReportArtifactMismatchResponse{Message: fmt.Sprintf(
		"the controller's copy of artifact %s (%s) matches its digest: the bytes changed on the way or on the node; download it again", artifact.Key(a), sha256digest.Short(a.Digest))}, nil
}

// ImportArtifact has the controller fetch an artifact itself (package
// importer) and store it as a push does, streaming progress.
func (s *artifactServer) ImportArtifact(req *ferryv1.ImportArtifactRequest, stream grpc.ServerStreamingServer[ferryv1.ImportArtifactResponse]) error {
	ctx := stream.Context()
	if s.d.Importer == nil {
		return status.Error(codes.Unimplemented, "this controller does not import artifacts")
	}
	actor := rpc.CallerName(ctx)
	source := importer.Display(req.GetSource())
	ev := s.d.auditEvent(ctx, "artifact.import", source, "")
	var resumed uint64
	audit := func(a *ferryv1.Artifact, p artifact.Pushed) *ferryv1.AuditEvent {
		ev.Target = artifact.Key(a)
		ev.Detail = fmt.Sprintf("source=%s digest=%s size=%d created=%v", source, a.Digest, a.Size, p != artifact.Unchanged)
		if resumed > 0 {
			ev.Detail += fmt.Sprintf(" resumed_from=%d", resumed)
		}
		if p == artifact.Restored {
			ev.Detail += " restored=true"
		}
		return ev
	}
	var last time.Time
	var sendErr error
	res, err := s.d.Importer.Import(ctx, importer.Request{
		Source: req.GetSource(), SHA256: req.GetSha256(), ChecksumURL: req.GetChecksumUrl(), CABundle: req.GetCaBundle(),
		Name: req.GetName(), Version: req.GetVersion(), OS: req.GetOs(), Arch: req.GetArch(), PushedBy: actor,
		Audit: func(a *ferryv1.Artifact, p artifact.Pushed) *ferryv1.AuditEvent { return audit(a, p) },
		Progress: func(p importer.Progress) {
			resumed = p.ResumedFrom
			// At most five a second, but every change of stage.
			if now := time.Now(); sendErr == nil && (now.Sub(last) >= 200*time.Millisecond || p.Stage != "fetching") {
				last = now
				sendErr = stream.Send(&ferryv1.ImportArtifactResponse{Msg: &ferryv1.ImportArtifactResponse_Progress{Progress: &ferryv1.ImportProgress{
					Received: p.Received, Total: p.Total, ResumedFrom: p.ResumedFrom, Stage: p.Stage,
				}}})
			}
		},
	})
	if err == nil && res.Pushed == artifact.Unchanged {
		err = s.d.unchanged(audit(res.Artifact, res.Pushed))
	}
	if err != nil {
		s.log.Info("artifact import refused", "source", source, "by", actor, "err", err)
		ev.Target, ev.Detail = source, ""
		s.d.refused(ev, err)
		return toStatus(err)
	}
	a := res.Artifact
	created, restored := res.Pushed != artifact.Unchanged, res.Pushed == artifact.Restored
	s.log.Info("artifact imported", "artifact", artifact.Key(a), "source", source, "digest", a.Digest, "size", a.Size, "resumed_from", resumed, "created", created, "restored", restored, "by", actor)
	result := &ferryv1.PushArtifactResponse{Artifact: a, Created: created, Restored: restored}
	s.d.replicate(ctx, result)
	return stream.Send(&ferryv1.ImportArtifactResponse{Msg: &ferryv1.ImportArtifactResponse_Result{Result: result}})
}

// CollectArtifacts removes every artifact that no stored package
// references and no rollout may still send to a node (one that has not
// ended, or whose jobs ended within the fetch grace). Each removal is
// audited as artifact.gc; with plan set it only lists them. An artifact
// that gains a reference meanwhile is kept (the store checks again in
// the transaction that removes it).
//
// With several controllers it runs on the leader (forwarded), whose
// engine knows every rollout in flight; a controller that does not lead
// refuses rather than judge from its own, possibly late, copy.
func (s *artifactServer) CollectArtifacts(ctx context.Context, req *ferryv1.CollectArtifactsRequest) (*ferryv1.CollectArtifactsResponse, error) {
	if err := s.d.Rollouts.Leading(); err != nil {
		return nil, toStatus(fmt.Errorf("artifact gc: %w", err))
	}
	all, err := s.d.Artifacts.List("")
	if err != nil {
		return nil, toStatus(err)
	}
	inUse := s.d.Rollouts.ArtifactsInUse()
	resp := &ferryv1.CollectArtifactsResponse{}
	for _, a := range all {
		refs, err := s.d.Artifacts.ReferencedBy(a.Digest)
		if err != nil {
			return nil, toStatus(err)
		}
		if len(refs) > 0 || len(inUse[a.Digest]) > 0 {
			continue
		}
		if !req.GetPlan() {
			ev := s.d.auditEvent(ctx, "artifact.gc", artifact.Key(a), "digest="+a.Digest)
			_, err := s.d.Artifacts.Delete(artifact.Key(a), func(*ferryv1.Artifact) *ferryv1.AuditEvent { return ev })
			if errors.Is(err, artifact.ErrReferenced) {
				continue
			}
			if err != nil {
				s.d.refused(ev, err)
				return nil, toStatus(fmt.Errorf("artifact gc: %s: %w; %d removed before it", artifact.Key(a), err, len(resp.Removed)))
			}
			s.log.Info("artifact collected", "artifact", artifact.Key(a), "digest", a.Digest)
		}
		resp.Removed = append(resp.Removed, a)
		resp.Bytes += a.GetSize()
	}
	return resp, nil
}
