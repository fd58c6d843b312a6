package server

import (
	"context"
	"errors"
	"slices"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrydeploy/ferry/shared/pki"
	"github.com/ferrydeploy/ferry/shared/rpc"
)

// The auth interceptor checks a caller's credential when a call starts,
// but a stream can stay open for days (`ferryctl nodes -w`, `ferryctl logs
// -f`, an agent's Connect and downloads). streams keeps the open streams
// of each identity, so that revoking an admin or removing a node ends
// theirs at once, with the same PermissionDenied a new call gets.

// streams is the registry of open streams by caller identity.
type streams struct {
	// check is the auth interceptor's identity check: nil while the
	// caller's credential is accepted.
	check func(rpc.Caller) error

	mu   sync.Mutex
	open map[pki.Identity]map[*openStream]struct{}
}

// openStream is one stream a handler is serving.
type openStream struct {
	caller rpc.Caller
	end    context.CancelCauseFunc
}

// credentialEnded is the cause of a stream ended because its caller's
// credential is no longer accepted; it says why (the revocation, the
// removal).
type credentialEnded struct{ error }

func newStreams(check func(rpc.Caller) error) *streams {
	return &streams{check: check, open: map[pki.Identity]map[*openStream]struct{}{}}
}

// recheck checks the callers of id's open streams again and ends those
// whose credential is no longer accepted. Handlers call it after revoking
// an admin or removing a node.
func (s *streams) recheck(id pki.Identity) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for o := range s.open[id] {
		if err := s.check(o.caller); err != nil {
			o.end(credentialEnded{err})
		}
	}
}

// add registers a stream of c, and checks c again after: a revocation
// that happened since the auth interceptor's check, and so before its
// recheck could see this stream, ends it here.
func (s *streams) add(c rpc.Caller, end context.CancelCauseFunc) (remove func()) {
	o := &openStream{caller: c, end: end}
	s.mu.Lock()
	if s.open[c.Identity] == nil {
		s.open[c.Identity] = map[*openStream]struct{}{}
	}
	s.open[c.Identity][o] = struct{}{}
	s.mu.Unlock()
	if err := s.check(c); err != nil {
		end(credentialEnded{err})
	}
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		delete(s.open[c.Identity], o)
		if len(s.open[c.Identity]) == 0 {
			delete(s.open, c.Identity)
		}
	}
}

// track wraps a stream handler: the handler sees a context that ends
// when its caller's credential does, and the call then ends with
// PermissionDenied and the reason, whatever the handler returned.
func (s *streams) track(h grpc.StreamHandler) grpc.StreamHandler {
	return func(srv any, ss grpc.ServerStream) error {
		c, ok := rpc.CallerFrom(ss.Context())
		if !ok { // a public method: no credential to end
			return h(srv, ss)
		}
		ctx, end := context.WithCancelCause(ss.Context())
		defer end(nil)
		remove := s.add(c, end)
		defer remove()
		err := h(srv, trackedStream{ServerStream: ss, ctx: ctx})
		var ended credentialEnded
		if errors.As(context.Cause(ctx), &ended) {
			return status.Error(codes.PermissionDenied, ended.Error())
		}
		return err
	}
}

// trackedStream is a stream whose context ends with its credential.
type trackedStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (t trackedStream) Context() context.Context { return t.ctx }

// streamRegistrar registers services with their stream handlers tracked,
// and the methods only the leader serves forwarded (forward.go).
type streamRegistrar struct {
	s       grpc.ServiceRegistrar
	streams *streams
	fwd     *forwarding
}

func (r streamRegistrar) RegisterService(desc *grpc.ServiceDesc, impl any) {
	d := *desc
	d.Streams = slices.Clone(desc.Streams)
	d.Methods = slices.Clone(desc.Methods)
	r.fwd.wrap(&d, impl, r.streams.track)
	r.s.RegisterService(&d, impl)
}

// recheck is the check the controller's auth interceptor makes of a
// caller's identity (controller.New): a revoked admin credential, or the
// certificate of a removed node, is refused.
func (d *Deps) recheck(c rpc.Caller) error {
	if d.Admins != nil {
		if err := d.Admins.Check(c.Identity, c.Cert); err != nil {
			return err
		}
	}
	if d.Fleet != nil {
		return d.Fleet.CheckIdentity(c.Identity, c.Cert)
	}
	return nil
}
