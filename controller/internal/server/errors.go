package server

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrydeploy/ferry/controller/internal/artifact"
	"github.com/ferrydeploy/ferry/controller/internal/cluster"
	"github.com/ferrydeploy/ferry/controller/internal/fleet"
	"github.com/ferrydeploy/ferry/controller/internal/importer"
	"github.com/ferrydeploy/ferry/controller/internal/mirror"
	"github.com/ferrydeploy/ferry/controller/internal/packages"
	"github.com/ferrydeploy/ferry/controller/internal/pkgspec"
	"github.com/ferrydeploy/ferry/controller/internal/rollout"
	"github.com/ferrydeploy/ferry/controller/internal/store"
	"github.com/ferrydeploy/ferry/shared/labels"
)

// errorCodes maps what the domain packages return to the status code a
// client sees (after etcd's v3rpc toGRPCErrorMap). The first entry that
// matches wins, so a package file problem caused by an unknown artifact
// is an invalid argument, not a missing artifact. Anything else is
// Internal.
var errorCodes = []struct {
	match func(error) bool
	code  codes.Code
}{
	// The action was not made because its audit entry could not be
	// written (a full disk): retry once that is fixed.
	{is(store.ErrAudit), codes.Unavailable},

	{as[*pkgspec.FieldError], codes.InvalidArgument},
	{as[pkgspec.ErrorList], codes.InvalidArgument},
	{is(packages.ErrImmutable), codes.AlreadyExists},
	{is(packages.ErrNotFound), codes.NotFound},
	{is(packages.ErrInUse), codes.FailedPrecondition},

	{is(artifact.ErrNotFound), codes.NotFound},
	{is(artifact.ErrInvalid), codes.InvalidArgument},
	{is(artifact.ErrChecksumMismatch), codes.InvalidArgument},
	{is(artifact.ErrUnsafeArchive), codes.InvalidArgument},
	{is(artifact.ErrSizeMismatch), codes.InvalidArgument},
	{is(artifact.ErrAmbiguous), codes.InvalidArgument},
	{is(artifact.ErrConflict), codes.AlreadyExists},
	{is(artifact.ErrReferenced), codes.FailedPrecondition},
	{is(artifact.ErrDamaged), codes.FailedPrecondition},
	{is(artifact.ErrDiskFull), codes.ResourceExhausted},
	{is(artifact.ErrPastEnd), codes.OutOfRange},
	{is(artifact.ErrNodeBusy), codes.ResourceExhausted},
	{is(artifact.ErrStalled), codes.Unavailable},
	{is(importer.ErrRefused), codes.PermissionDenied},
	{is(importer.ErrFetch), codes.FailedPrecondition},
	{is(importer.ErrTooLarge), codes.InvalidArgument},
	{is(importer.ErrBusy), codes.AlreadyExists},
	{is(mirror.ErrInvalid), codes.InvalidArgument},

	{is(rollout.ErrInvalid), codes.InvalidArgument},
	{is(rollout.ErrNotFound), codes.NotFound},
	{is(rollout.ErrConflict), codes.AlreadyExists},
	{is(rollout.ErrState), codes.FailedPrecondition},
	{is(rollout.ErrNotLeading), codes.Unavailable},
	{is(store.ErrFenced), codes.Unavailable},
	{as[*cluster.CutOffError], codes.Unavailable},
	{as[*cluster.NotLeaderError], codes.Unavailable},

	{is(store.ErrNotFound), codes.NotFound},
	{is(store.ErrNodeExists), codes.AlreadyExists},
	{is(store.ErrTokenInvalid), codes.Unauthenticated},
	{is(store.ErrTokenUnusable), codes.PermissionDenied},

	// What a node or an admin sends, over a limit or not allowed.
	{is(labels.ErrInvalid), codes.InvalidArgument},
	{is(labels.ErrNotAllowed), codes.PermissionDenied},
	{is(fleet.ErrReportTooLarge), codes.InvalidArgument},
	{is(fleet.ErrRemoved), codes.FailedPrecondition},

	// A call whose client went away or ran out of time.
	{is(context.Canceled), codes.Canceled},
	{is(context.DeadlineExceeded), codes.DeadlineExceeded},
}

func is(target error) func(error) bool {
	return func(err error) bool { return errors.Is(err, target) }
}

func as[T error](err error) bool {
	var target T
	return errors.As(err, &target)
}

// toStatus is how every handler returns an error: a status error passes
// unchanged (one a handler made, or a stream's receive error); others get
// the code errorCodes gives them, or the code of a status error they wrap
// (a receive error inside a push's "upload was discarded"), or Internal.
// The message stays the error's own: it names the thing and the fix.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := err.(interface{ GRPCStatus() *status.Status }); ok {
		return err
	}
	for _, e := range errorCodes {
		if e.match(err) {
			return status.Error(e.code, err.Error())
		}
	}
	if s, ok := status.FromError(err); ok && s.Code() != codes.Unknown {
		return status.Error(s.Code(), err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}
