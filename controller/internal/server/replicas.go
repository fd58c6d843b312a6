package server

import (
	"context"
	"errors"
	"io"
	"log/slog"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrydeploy/ferry/controller/internal/artifact"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/rpc"
)

// Replicas copies a pushed or imported artifact's bytes to the other
// controllers (package replica): copies is how many hold them when it
// returns, and warning, when set, tells the admin they are on fewer than
// two.
type Replicas interface {
	Replicate(ctx context.Context, a *ferryv1.Artifact) (copies int, warning string)
}

// replicate fills in resp's copies and warning; without other
// controllers (no Replicas) it leaves them unset.
func (d *Deps) replicate(ctx context.Context, resp *ferryv1.PushArtifactResponse) {
	if d.Replicas == nil || resp.GetArtifact() == nil {
		return
	}
	copies, warning := d.Replicas.Replicate(ctx, resp.GetArtifact())
	resp.Copies, resp.Warning = uint32(copies), warning //nolint:gosec // a count of controllers
}

// maxReplicaTransfers bounds the blobs other controllers send or fetch at
// once, each way, so a controller catching up cannot take every disk and
// link slot from the agents' downloads.
const maxReplicaTransfers = 4

// replicaServer is the ReplicaService other controllers call (the policy
// admits only controller certificates) on the artifact store.
type replicaServer struct {
	ferryv1.UnimplementedReplicaServiceServer
	d        *Deps
	log      *slog.Logger
	receives chan struct{}
	sends    chan struct{}
}

func newReplicaServer(d *Deps) *replicaServer {
	return &replicaServer{d: d, log: d.Logger.With("component", "replica"),
		receives: make(chan struct{}, maxReplicaTransfers), sends: make(chan struct{}, maxReplicaTransfers)}
}

func acquire(ctx context.Context, slots chan struct{}) (release func(), err error) {
	select {
	case slots <- struct{}{}:
		return func() { <-slots }, nil
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
}

// ReplicateArtifact receives another controller's copy of one blob.
func (s *replicaServer) ReplicateArtifact(stream grpc.ClientStreamingServer[ferryv1.ReplicateArtifactRequest, ferryv1.ReplicateArtifactResponse]) error {
	ctx := stream.Context()
	first, err := stream.Recv()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return status.Error(codes.InvalidArgument, "empty replication: send the header first")
		}
		return err
	}
	h := first.GetHeader()
	if h == nil {
		return status.Error(codes.InvalidArgument, "the first message of a replication must be the header (digest, size)")
	}
	form, err := s.d.Artifacts.LookupForm(h.GetDigest())
	if err != nil {
		return toStatus(err)
	}
	if h.GetSize() != form.Size {
		return status.Errorf(codes.InvalidArgument, "artifact %s: the copy declares %d bytes, its record gives %d; not taken", artifact.Key(form.Rec), h.GetSize(), form.Size)
	}
	if s.d.Artifacts.HasBlob(form.Digest) {
		return stream.SendAndClose(&ferryv1.ReplicateArtifactResponse{AlreadyHeld: true})
	}
	release, err := acquire(ctx, s.receives)
	if err != nil {
		return err
	}
	defer release()
	if err := s.d.Artifacts.PutBlob(ctx, form.Digest, replicaChunks(stream)); err != nil {
		s.log.Warn("copy of an artifact from another controller refused", "digest", form.Digest, "from", peerName(ctx), "err", err)
		return toStatus(err)
	}
	s.log.Info("artifact blob copied here from another controller", "artifact", artifact.Key(form.Rec), "digest", form.Digest, "from", peerName(ctx))
	return stream.SendAndClose(&ferryv1.ReplicateArtifactResponse{})
}

// replicaChunks reads the chunks of a replication after its header.
func replicaChunks(stream grpc.ClientStreamingServer[ferryv1.ReplicateArtifactRequest, ferryv1.ReplicateArtifactResponse]) *chunkReader {
	var msg ferryv1.ReplicateArtifactRequest
	return &chunkReader{next: func() ([]byte, error) {
		msg.Reset()
		if err := stream.RecvMsg(&msg); err != nil {
			return nil, err
		}
		if msg.GetHeader() != nil {
			return nil, status.Error(codes.InvalidArgument, "a replication carries one header, in its first message")
		}
		return msg.GetChunk(), nil
	}}
}

// FetchArtifact streams one blob this controller holds to another.
func (s *replicaServer) FetchArtifact(req *ferryv1.FetchArtifactRequest, stream grpc.ServerStreamingServer[ferryv1.FetchArtifactResponse]) error {
	ctx := stream.Context()
	release, err := acquire(ctx, s.sends)
	if err != nil {
		return err
	}
	defer release()
	form, blob, err := s.d.Artifacts.OpenForm(req.GetDigest())
	if err != nil {
		return toStatus(err)
	}
	defer func() { _ = blob.Close() }() // read-only
	buf := make([]byte, artifact.ChunkSize)
	sent := false
	for {
		n, rerr := blob.Read(buf)
		if n > 0 || !sent && errors.Is(rerr, io.EOF) {
			if err := stream.Send(&ferryv1.FetchArtifactResponse{Size: form.Size, Chunk: buf[:n]}); err != nil {
				return err
			}
			sent = true
		}
		if errors.Is(rerr, io.EOF) {
			return nil
		}
		if rerr != nil {
			s.log.Error("read an artifact blob for another controller", "digest", form.Digest, "err", rerr)
			return status.Errorf(codes.Internal, "artifact %s: read its blob: %v", artifact.Key(form.Rec), rerr)
		}
	}
}

// peerName names the controller calling, with its address, in the log.
func peerName(ctx context.Context) string {
	if c, ok := rpc.CallerFrom(ctx); ok {
		return c.Identity.String() + " " + c.Addr
	}
	return "unknown"
}
