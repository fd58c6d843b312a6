package fetch

import (
	"context"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/sha256digest"
)

// reportTimeout bounds a mismatch report: to answer it the controller may
// hash a large blob.
const reportTimeout = 2 * time.Minute

// damagedError is the controller's word that its copy of an artifact is
// damaged: the controller's own message (it names the artifact and the
// fix), matched by ErrDamaged.
type damagedError struct{ msg string }

func (e *damagedError) Error() string        { return e.msg }
func (e *damagedError) Is(target error) bool { return target == ErrDamaged }

// reportMismatch tells the controller that the bytes downloaded for
// digest hashed to got (hex), so that it hashes its own copy. It returns a
// *damagedError when the controller found its copy damaged too: then
// downloading again is pointless. A controller that found its copy intact,
// or did not answer, leaves the attempts to go on.
func (f *Fetcher) reportMismatch(ctx context.Context, digest, got string) error {
	rctx, cancel := context.WithTimeout(ctx, reportTimeout)
	defer cancel()
	resp, err := f.cfg.Client.ReportArtifactMismatch(rctx, &ferryv1.ReportArtifactMismatchRequest{Digest: digest, GotDigest: sha256digest.Prefix + got})
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case status.Code(err) == codes.Unimplemented:
		f.log.Info("the controller takes no reports of mismatching downloads (an older version); downloading again", "artifact", digest)
		return nil
	case err != nil:
		f.log.Warn("could not report the mismatching download to the controller; downloading again", "artifact", digest, "err", err)
		return nil
	case resp.GetDamaged():
		f.log.Error("the controller's copy of the artifact is damaged too; not downloading it again", "artifact", digest, "controller", resp.GetMessage())
		return &damagedError{msg: resp.GetMessage()}
	}
	f.log.Info("the controller's copy of the artifact is intact; downloading again", "artifact", digest, "controller", resp.GetMessage())
	return nil
}
