// Package pushclient is ferryctl's side of an artifact push: it reads what
// a release file's name and its published checksum file say, and streams
// the file to the controller's ArtifactService, checking the digest the
// controller stored. It is client code only: ferryctl links none of the
// controller's server packages (see cmd/ferryctl's deps test).
package pushclient

import (
	"cmp"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"strings"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/sha256digest"
)

// ChunkSize is the size of the messages a push carries (the controller's
// downloads use the same).
const ChunkSize = 1 << 20

// Push uploads body under hdr in ChunkSize messages and returns the
// controller's answer. progress, if not nil, is called after each chunk
// with the bytes sent so far. The digest the controller stored must be the
// declared hdr.Sha256, or, when none was declared, the hash of the bytes
// sent (computed while sending).
func Push(ctx context.Context, c ferryv1.ArtifactServiceClient, hdr *ferryv1.PushArtifactHeader, body io.Reader, progress func(sent uint64)) (*ferryv1.PushArtifactResponse, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // aborts the stream on an early return
	stream, err := c.PushArtifact(ctx)
	if err != nil {
		return nil, err
	}
	if err := stream.Send(&ferryv1.PushArtifactRequest{Msg: &ferryv1.PushArtifactRequest_Header{Header: hdr}}); err != nil {
		return nil, closeErr(stream, err)
	}
	var h hash.Hash
	if hdr.GetSha256() == "" {
		h = sha256.New()
	}
	buf := make([]byte, ChunkSize)
	// One message, reused: SendMsg marshals it (copying the data) before it
	// returns, and ferryctl installs no stats handler that keeps messages.
	chunk := &ferryv1.PushArtifactRequest_Chunk{}
	msg := &ferryv1.PushArtifactRequest{Msg: chunk}
	var sent uint64
	complete := false
	for {
		n, rerr := io.ReadFull(body, buf)
		if n > 0 {
			if h != nil {
				h.Write(buf[:n])
			}
			chunk.Chunk = buf[:n]
			if err := stream.Send(msg); err != nil {
				// The controller ended the push early: it already had
				// these bytes, or refused them. Its answer says which.
				if errors.Is(err, io.EOF) {
					break
				}
				return nil, err
			}
			sent += uint64(n)
			if progress != nil {
				progress(sent)
			}
		}
		if errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF) {
			complete = true
			break
		}
		if rerr != nil {
			if ctx.Err() != nil {
				// The push was cancelled and the read failed because of it
				// (a reader tied to the same context): the stream, opened
				// with ctx, reports the cancellation as the gRPC status.
				_, err := stream.CloseAndRecv()
				return nil, cmp.Or(err, ctx.Err())
			}
			return nil, fmt.Errorf("read %s: %w", hdr.GetName(), rerr)
		}
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return nil, err
	}
	want := sha256digest.Prefix + strings.ToLower(strings.TrimPrefix(hdr.GetSha256(), sha256digest.Prefix))
	if h != nil {
		if !complete {
			return resp, nil // the controller answered before reading it all
		}
		want = sha256digest.Format(h.Sum(nil))
	}
	if got := resp.GetArtifact().GetDigest(); got != want {
		return resp, fmt.Errorf("artifact %s: the controller stored %s but %s was sent; the data changed in transit or while it was read: remove it with `ferryctl artifact rm %s` and push again",
			Key(resp.GetArtifact()), got, want, Key(resp.GetArtifact()))
	}
	return resp, nil
}

// closeErr returns the controller's status when a send failed because the
// stream ended.
func closeErr(stream ferryv1.ArtifactService_PushArtifactClient, err error) error {
	if errors.Is(err, io.EOF) {
		if _, rerr := stream.CloseAndRecv(); rerr != nil {
			return rerr
		}
	}
	return err
}

// Key is an artifact's "name@version", as the controller keys it.
func Key(a *ferryv1.Artifact) string { return a.GetName() + "@" + a.GetVersion() }
