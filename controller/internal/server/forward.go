package server

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"path"
	"slices"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/pki"
	"github.com/ferrydeploy/ferry/shared/rpc"
)

// Forwarding, with several controllers on one etcd store: only the
// leader runs the rollout engine, so a controller that does not lead
// hands the calls that go through the engine (forwarded, below) to the
// leader over ClusterService.Forward, with its own controller certificate
// and the admin's certificate in the call. The leader verifies the
// admin's certificate against the CA and authorizes it as the auth
// interceptor would have (the method's role, revoked admins refused), and
// runs the call as the admin: the audit names the admin. Only a
// controller may forward (ClusterService accepts nothing else), and only
// these methods are forwarded: a controller certificate gains no other
// admin call this way.

// forwarded are the methods a controller that does not lead forwards to
// the leader: the rollout engine's admin actions; the rollout watch,
// whose events only the leader's engine produces, and the read of one
// rollout (what `ferryctl rollout` just reported is what `rollout
// status` shows, not this controller's copy a moment behind); and the
// removals that must know every rollout in flight (artifact gc, package
// rm), which only the leader's engine knows for sure. The other reads
// (list, history, logs, nodes) are answered here from what this
// controller follows in the store.
var forwarded = map[string]bool{
	ferryv1.RolloutService_GetRollout_FullMethodName:        true,
	ferryv1.ArtifactService_CollectArtifacts_FullMethodName: true,
	ferryv1.PackageService_DeletePackage_FullMethodName:     true,
	ferryv1.RolloutService_CreateRollout_FullMethodName:     true,
	ferryv1.RolloutService_PromoteRollout_FullMethodName:    true,
	ferryv1.RolloutService_PauseRollout_FullMethodName:      true,
	ferryv1.RolloutService_ResumeRollout_FullMethodName:     true,
	ferryv1.RolloutService_AbortRollout_FullMethodName:      true,
	ferryv1.RolloutService_UndoRollout_FullMethodName:       true,
	ferryv1.RolloutService_WatchRollout_FullMethodName:      true,
	ferryv1.GroupService_UpdateGroup_FullMethodName:         true,
}

// forwardedReads are the forwarded calls that change nothing.
var forwardedReads = map[string]bool{
	ferryv1.RolloutService_GetRollout_FullMethodName:   true,
	ferryv1.RolloutService_WatchRollout_FullMethodName: true,
}

// Leader is where the calls only the leader serves go.
type Leader struct {
	ID   string
	Addr string
	// Conn reaches it with this controller's certificate; unary calls
	// share it.
	Conn grpc.ClientConnInterface
	// Dial opens a connection of its own for a streaming call (nil: use
	// Conn), so that long watches never take up the streams a connection
	// may carry (rpc.Limits.MaxStreams) and hold the other calls back.
	Dial func() (grpc.ClientConnInterface, func(), error)
}

// Metadata of a forwarded call, from the leader: the header once it has
// accepted the call, the trailer on every answer of its Forward handler
// (so an error without it did not come from the leader).
const (
	forwardAccepted = "ferry-forward-accepted"
	forwardAnswered = "ferry-forward-answered"
)

// maxForwardedCert bounds the admin certificate a forwarded call carries.
const maxForwardedCert = 16 << 10

// localMethod is a forwarded method as this controller serves it.
type localMethod struct {
	impl     any
	unary    grpc.MethodHandler // or
	stream   grpc.StreamHandler
	req, out protoreflect.MessageType
}

// forwarding keeps the forwarded methods' handlers, for the calls other
// controllers forward here, and wraps them to forward when another
// controller leads.
type forwarding struct {
	d     *Deps
	local map[string]localMethod
	// onAccepted (tests) runs when the leader has accepted a call.
	onAccepted func()
}

func newForwarding(d *Deps) *forwarding { return &forwarding{d: d, local: map[string]localMethod{}} }

// messageTypes are a method's request and response types.
func messageTypes(service string, method string) (req, out protoreflect.MessageType) {
	sd, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(service))
	if err != nil {
		panic(fmt.Sprintf("forward %s/%s: %v", service, method, err))
	}
	md := sd.(protoreflect.ServiceDescriptor).Methods().ByName(protoreflect.Name(method))
	if md == nil {
		panic(fmt.Sprintf("forward %s/%s: no such method", service, method))
	}
	req, err = protoregistry.GlobalTypes.FindMessageByName(md.Input().FullName())
	if err != nil {
		panic(fmt.Sprintf("forward %s/%s: %v", service, method, err))
	}
	out, err = protoregistry.GlobalTypes.FindMessageByName(md.Output().FullName())
	if err != nil {
		panic(fmt.Sprintf("forward %s/%s: %v", service, method, err))
	}
	return req, out
}

// wrap records desc's forwarded methods and replaces their handlers with
// ones that forward while another controller leads. Stream handlers are
// wrapped by track: first (local ones) and after (the forwarding ones).
func (f *forwarding) wrap(desc *grpc.ServiceDesc, impl any, track func(grpc.StreamHandler) grpc.StreamHandler) {
	for i, m := range desc.Methods {
		full := "/" + desc.ServiceName + "/" + m.MethodName
		if !forwarded[full] {
			continue
		}
		req, out := messageTypes(desc.ServiceName, m.MethodName)
		f.local[full] = localMethod{impl: impl, unary: m.Handler, req: req, out: out}
		desc.Methods[i].Handler = f.unary(full, m.Handler, out)
	}
	for i, s := range desc.Streams {
		full := "/" + desc.ServiceName + "/" + s.StreamName
		if !forwarded[full] || s.ClientStreams {
			desc.Streams[i].Handler = track(s.Handler)
			continue
		}
		req, out := messageTypes(desc.ServiceName, s.StreamName)
		f.local[full] = localMethod{impl: impl, stream: track(s.Handler), req: req, out: out}
		desc.Streams[i].Handler = track(f.serverStream(full, s.Handler, req, out))
	}
}

// leader says where to forward a call; ok is false to serve it here.
func (f *forwarding) leader(ctx context.Context) (Leader, bool) {
	if f.d.Leader == nil {
		return Leader{}, false
	}
	return f.d.Leader(ctx)
}

// unary wraps a unary handler: after the server's interceptors (the
// caller is authenticated), the call goes to the leader or to h's method.
func (f *forwarding) unary(method string, h grpc.MethodHandler, out protoreflect.MessageType) grpc.MethodHandler {
	return func(srv any, ctx context.Context, dec func(any) error, next grpc.UnaryServerInterceptor) (any, error) {
		fwd := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
			to, ok := f.leader(ctx)
			if !ok {
				return handler(ctx, req)
			}
			var resp any
			err := f.forward(ctx, to, method, req.(proto.Message), out, func(m proto.Message) error {
				if resp != nil {
					return status.Errorf(codes.Internal, "the leader %s answered %s with more than one message", to.ID, path.Base(method))
				}
				resp = m
				return nil
			})
			if err == nil && resp == nil {
				err = status.Errorf(codes.Internal, "the leader %s answered %s with no message", to.ID, path.Base(method))
			}
			return resp, err
		}
		return h(srv, ctx, dec, chainUnary(next, fwd))
	}
}

// chainUnary runs inner inside outer (nil: none).
func chainUnary(outer, inner grpc.UnaryServerInterceptor) grpc.UnaryServerInterceptor {
	if outer == nil {
		return inner
	}
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		return outer(ctx, req, info, func(ctx context.Context, req any) (any, error) { return inner(ctx, req, info, handler) })
	}
}

// serverStream wraps the handler of a server-streaming method.
func (f *forwarding) serverStream(method string, h grpc.StreamHandler, reqType, out protoreflect.MessageType) grpc.StreamHandler {
	return func(srv any, ss grpc.ServerStream) error {
		to, ok := f.leader(ss.Context())
		if !ok {
			return h(srv, ss)
		}
		req := reqType.New().Interface()
		if err := ss.RecvMsg(req); err != nil {
			return err
		}
		if to.Dial != nil {
			conn, closeConn, err := to.Dial()
			if err != nil {
				return f.notAnswered(to, method, false, err)
			}
			defer closeConn()
			to.Conn = conn
		}
		return f.forward(ss.Context(), to, method, req, out, func(m proto.Message) error { return ss.SendMsg(m) })
	}
}

// forward runs the call of ctx's caller on the leader and hands each
// response message to each.
func (f *forwarding) forward(ctx context.Context, to Leader, method string, req proto.Message, out protoreflect.MessageType, each func(proto.Message) error) error {
	c, ok := rpc.CallerFrom(ctx)
	if !ok || c.Cert == nil {
		return status.Errorf(codes.Unauthenticated, "%s needs the caller's certificate to be forwarded to the leader", path.Base(method))
	}
	body, err := proto.Marshal(req)
	if err != nil {
		return status.Errorf(codes.Internal, "forward %s: %v", path.Base(method), err)
	}
	st, err := ferryv1.NewClusterServiceClient(to.Conn).Forward(ctx)
	if err != nil {
		return f.notAnswered(to, method, false, err)
	}
	// A failed send shows in the receive below.
	_ = st.Send(&ferryv1.ForwardRequest{Msg: &ferryv1.ForwardRequest_Call{Call: &ferryv1.ForwardCall{
		Method: method, AdminCertificateDer: c.Cert.Raw, AdminAddress: c.Addr,
	}}})
	_ = st.Send(&ferryv1.ForwardRequest{Msg: &ferryv1.ForwardRequest_Message{Message: body}})
	_ = st.CloseSend()
	// The leader's header says it accepted the call (or the stream failed).
	hdr, herr := st.Header()
	accepted := herr == nil && len(hdr.Get(forwardAccepted)) > 0
	if accepted && f.onAccepted != nil {
		f.onAccepted()
	}
	for {
		m, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			if ctx.Err() != nil || len(st.Trailer().Get(forwardAnswered)) > 0 {
				return err // the caller went away, or the leader's answer
			}
			return f.notAnswered(to, method, accepted, err)
		}
		resp := out.New().Interface()
		if err := proto.Unmarshal(m.GetMessage(), resp); err != nil {
			return status.Errorf(codes.Internal, "the leader %s answered %s with a message this controller cannot read: %v", to.ID, path.Base(method), err)
		}
		if err := each(resp); err != nil {
			return err
		}
	}
}

// notAnswered is the error of a forwarded call the leader did not answer:
// it could not be reached, or (accepted) it stopped while it served the
// call. Either way the caller may try again: another controller is
// elected within seconds if the leader is gone.
func (f *forwarding) notAnswered(to Leader, method string, accepted bool, err error) error {
	why := status.Convert(err).Message()
	self := "this controller"
	if f.d.ControllerID != "" {
		self = "controller " + f.d.ControllerID
	}
	if accepted && forwardedReads[method] {
		return status.Errorf(codes.Unavailable, "%s forwarded %s to the leader, %s at %s, which stopped answering (%s); try again: another controller leads within seconds if %s is gone",
			self, path.Base(method), to.ID, to.Addr, why, to.ID)
	}
	if accepted {
		return status.Errorf(codes.Unavailable, "%s forwarded %s to the leader, %s at %s, which stopped answering before it finished (%s); it may have been applied: check (e.g. ferryctl rollout list) and try again, another controller leads within seconds if %s is gone",
			self, path.Base(method), to.ID, to.Addr, why, to.ID)
	}
	return status.Errorf(codes.Unavailable, "%s could not forward %s to the leader, %s at %s (%s); nothing was changed: try again in a few seconds, another controller leads by then if %s is gone",
		self, path.Base(method), to.ID, to.Addr, why, to.ID)
}

// ServeForward is the leader's end of ClusterService.Forward: it runs a
// call another controller forwarded, as the admin who made it.
func (d *Deps) ServeForward(stream grpc.BidiStreamingServer[ferryv1.ForwardRequest, ferryv1.ForwardResponse]) error {
	// Whatever this returns is the leader's answer, not a broken link.
	defer stream.SetTrailer(metadata.Pairs(forwardAnswered, "1"))
	via, ok := rpc.CallerFrom(stream.Context())
	if !ok || via.Identity.Role != pki.RoleController {
		return status.Error(codes.PermissionDenied, "only a controller may forward a call")
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	call := first.GetCall()
	if call == nil {
		return status.Error(codes.InvalidArgument, "the first message of a forwarded call must name the call")
	}
	m, ok := d.fwd.local[call.GetMethod()]
	if !ok {
		return status.Errorf(codes.PermissionDenied, "%q is not a call controllers forward to the leader", call.GetMethod())
	}
	admin, err := d.forwardedCaller(call)
	if err != nil {
		return err
	}
	if err := stream.SendHeader(metadata.Pairs(forwardAccepted, "1")); err != nil {
		return err
	}
	d.Logger.Debug("serving a forwarded call", "method", call.GetMethod(), "admin", admin.Identity.String(), "via", via.Identity.Name, "addr", via.Addr)
	ctx := rpc.WithCaller(stream.Context(), admin)
	fs := &forwardedStream{ctx: ctx, s: stream}
	if m.stream != nil {
		return m.stream(m.impl, fs)
	}
	resp, err := m.unary(m.impl, ctx, fs.RecvMsg, nil)
	if err != nil {
		return err
	}
	return fs.SendMsg(resp)
}

// forwardedCaller is the admin of a forwarded call, checked as the auth
// interceptor checks a caller: a certificate of this installation's CA,
// valid now, of a role the method allows, and still accepted (not
// revoked).
func (d *Deps) forwardedCaller(call *ferryv1.ForwardCall) (rpc.Caller, error) {
	der := call.GetAdminCertificateDer()
	if len(der) == 0 || len(der) > maxForwardedCert {
		return rpc.Caller{}, status.Errorf(codes.InvalidArgument, "a forwarded call carries the admin's certificate (%d bytes; at most %d are accepted)", len(der), maxForwardedCert)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return rpc.Caller{}, status.Errorf(codes.InvalidArgument, "the forwarded admin certificate: %v", err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: d.CA.Pool(), CurrentTime: d.Now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return rpc.Caller{}, status.Errorf(codes.Unauthenticated, "the forwarded admin certificate does not verify against this installation's CA: %v", err)
	}
	id, err := pki.ParseIdentity(cert)
	if err != nil {
		return rpc.Caller{}, status.Errorf(codes.Unauthenticated, "the forwarded admin certificate: %v", err)
	}
	access := rpc.DefaultPolicy(call.GetMethod())
	if access.Public || !slices.Contains(access.Roles, id.Role) {
		return rpc.Caller{}, status.Errorf(codes.PermissionDenied, "%s is not allowed for %s (role %s)", call.GetMethod(), id, id.Role)
	}
	c := rpc.Caller{Identity: id, Cert: cert, Addr: call.GetAdminAddress()}
	if err := d.recheck(c); err != nil {
		return rpc.Caller{}, status.Error(codes.PermissionDenied, err.Error())
	}
	return c, nil
}

// forwardedStream is a forwarded call's stream as the method's handler
// sees it; headers and trailers stay on the forwarding controller's side.
type forwardedStream struct {
	ctx context.Context
	s   grpc.BidiStreamingServer[ferryv1.ForwardRequest, ferryv1.ForwardResponse]
}

func (f *forwardedStream) Context() context.Context     { return f.ctx }
func (f *forwardedStream) SetHeader(metadata.MD) error  { return nil }
func (f *forwardedStream) SendHeader(metadata.MD) error { return nil }
func (f *forwardedStream) SetTrailer(metadata.MD)       {}

func (f *forwardedStream) SendMsg(m any) error {
	b, err := proto.Marshal(m.(proto.Message))
	if err != nil {
		return status.Errorf(codes.Internal, "encode a forwarded call's response: %v", err)
	}
	return f.s.Send(&ferryv1.ForwardResponse{Message: b})
}

func (f *forwardedStream) RecvMsg(m any) error {
	r, err := f.s.Recv()
	if err != nil {
		return err
	}
	if r.GetCall() != nil {
		return status.Error(codes.InvalidArgument, "a forwarded call names its call once, first")
	}
	if err := proto.Unmarshal(r.GetMessage(), m.(proto.Message)); err != nil {
		return status.Errorf(codes.InvalidArgument, "a forwarded call's request: %v", err)
	}
	return nil
}
