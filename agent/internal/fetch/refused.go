package fetch

import (
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// A refused download ends the job, and its error becomes the job's
// message in `ferryctl rollout status`: it reads as the controller's
// reason and what to do, not as gRPC's "rpc error: code = … desc = …".

// refusedAdvice says what to do about each refusal the controller gives.
var refusedAdvice = map[codes.Code]string{
	codes.PermissionDenied: "if this node should have the package, check its rollout with `ferryctl rollout status` and roll the package out to the node again",
	codes.Unauthenticated:  "the controller no longer accepts this node's certificate: enroll the node again with a new join token (`ferry-agent enroll`)",
	codes.InvalidArgument:  "the job names an artifact the controller cannot serve: apply the package again with `ferryctl package apply` and start a new rollout",
	codes.Unimplemented:    "this controller cannot serve the download: check that the controller and the agent are the same version (`ferryctl version`, `ferry-agent --version`)",
}

// refusal reports the errors that end a download at once: the
// controller's answer would be the same on the next try.
func refusal(err error) bool {
	_, ok := refusedAdvice[status.Code(err)]
	return ok
}

// refusedError is a download the controller refused. It matches
// ErrRefused, and unwraps to the controller's status so that status.Code
// still tells the refusals apart.
type refusedError struct {
	msg    string
	status error
}

func (e *refusedError) Error() string        { return e.msg }
func (e *refusedError) Unwrap() error        { return e.status }
func (e *refusedError) Is(target error) bool { return target == ErrRefused }

// refused words the controller's refusal (see refusal) of the download
// of digest.
func refused(digest string, err error) error {
	msg := fmt.Sprintf("download of artifact %s refused by the controller: %s", digest, reason(err))
	return &refusedError{msg: msg + "; " + refusedAdvice[status.Code(err)], status: err}
}

// reason is what the controller (or the connection) said, without gRPC's
// "rpc error: code = … desc =" wrapper: the message of the status err
// carries, or err's own text when it carries none.
func reason(err error) string {
	var se interface{ GRPCStatus() *status.Status }
	if errors.As(err, &se) {
		if st := se.GRPCStatus(); st != nil && st.Message() != "" {
			return st.Message()
		}
	}
	return err.Error()
}
