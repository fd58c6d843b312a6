package server

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrydeploy/ferry/controller/internal/artifact"
	"github.com/ferrydeploy/ferry/controller/internal/packages"
	"github.com/ferrydeploy/ferry/controller/internal/pkgspec"
	"github.com/ferrydeploy/ferry/controller/internal/rollout"
	"github.com/ferrydeploy/ferry/controller/internal/store"
)

func TestToStatus(t *testing.T) {
	// wrap is how domain packages return their sentinels: with the thing
	// and the fix around them.
	wrap := func(err error) error { return fmt.Errorf("artifact a@1: %w; do this instead", err) }
	fieldErr := &pkgspec.FieldError{File: "go.yaml", Line: 3, Field: "artifact", Problem: "unknown artifact", Err: artifact.ErrNotFound}
	cases := []struct {
		name string
		err  error
		code codes.Code
	}{
		{"package file problem caused by a missing artifact", fieldErr, codes.InvalidArgument},
		{"list of package file problems", pkgspec.ErrorList{fieldErr}, codes.InvalidArgument},
		{"package version applied with other content", wrap(packages.ErrImmutable), codes.AlreadyExists},
		{"unknown package", wrap(packages.ErrNotFound), codes.NotFound},

		{"unknown artifact", wrap(artifact.ErrNotFound), codes.NotFound},
		{"invalid artifact request", wrap(artifact.ErrInvalid), codes.InvalidArgument},
		{"checksum mismatch", wrap(artifact.ErrChecksumMismatch), codes.InvalidArgument},
		{"size mismatch", wrap(artifact.ErrSizeMismatch), codes.InvalidArgument},
		{"ambiguous reference", wrap(artifact.ErrAmbiguous), codes.InvalidArgument},
		{"artifact version with other bytes", wrap(artifact.ErrConflict), codes.AlreadyExists},
		{"artifact a package uses", wrap(artifact.ErrReferenced), codes.FailedPrecondition},
		{"quarantined artifact", wrap(artifact.ErrDamaged), codes.FailedPrecondition},
		{"full disk", wrap(artifact.ErrDiskFull), codes.ResourceExhausted},
		{"download offset past the end", wrap(artifact.ErrPastEnd), codes.OutOfRange},

		{"invalid rollout", wrap(rollout.ErrInvalid), codes.InvalidArgument},
		{"unknown rollout", wrap(rollout.ErrNotFound), codes.NotFound},
		{"conflicting rollout", wrap(rollout.ErrConflict), codes.AlreadyExists},
		{"wrong rollout state", wrap(rollout.ErrState), codes.FailedPrecondition},
		// The rollout engine names a package the store does not have.
		{"rollout of an unknown package", fmt.Errorf("package go@9: %w", packages.ErrNotFound), codes.NotFound},

		{"missing record", wrap(store.ErrNotFound), codes.NotFound},
		{"node ID taken", wrap(store.ErrNodeExists), codes.AlreadyExists},
		{"wrong join token", store.ErrTokenInvalid, codes.Unauthenticated},
		{"used-up join token", wrap(store.ErrTokenUnusable), codes.PermissionDenied},
		// Whatever else the error says, the action was not made.
		{"audit entry not written", fmt.Errorf("%w: %w: no space left on device; nothing was changed", artifact.ErrDiskFull, store.ErrAudit), codes.Unavailable},

		{"client went away", wrap(context.Canceled), codes.Canceled},
		{"client ran out of time", context.DeadlineExceeded, codes.DeadlineExceeded},
		{"wrapped receive error keeps its code", fmt.Errorf("artifact a@1: receive: %w; the upload was discarded", status.Error(codes.Canceled, "context canceled")), codes.Canceled},
		{"wrapped status without a code", wrap(status.Error(codes.Unknown, "what")), codes.Internal},
		{"anything else", errors.New("bbolt: database not open"), codes.Internal},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := toStatus(tc.err)
			s, ok := status.FromError(got)
			if !ok {
				t.Fatalf("toStatus(%v) = %v, not a status error", tc.err, got)
			}
			if s.Code() != tc.code {
				t.Errorf("code = %s, want %s", s.Code(), tc.code)
			}
			if s.Message() != tc.err.Error() {
				t.Errorf("message = %q, want the error's own %q", s.Message(), tc.err.Error())
			}
		})
	}
}

func TestToStatusKeepsStatusErrors(t *testing.T) {
	if err := toStatus(nil); err != nil {
		t.Fatalf("toStatus(nil) = %v", err)
	}
	for _, c := range []codes.Code{codes.InvalidArgument, codes.Unknown, codes.Canceled} {
		err := status.Error(c, "the first message of a push must be the header")
		if got := toStatus(err); got != err { //nolint:errorlint // the very same error value, not only one that matches
			t.Errorf("toStatus(%v) = %v, want it unchanged", err, got)
		}
	}
}
