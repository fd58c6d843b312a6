package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// reach turns a failure to reach the controller, or to hear from it in
// time, into words that name the address and what to check. Other errors
// (the controller's own answers) pass through unchanged.
func (a *app) reach(err error, limit time.Duration) error {
	if err == nil {
		return nil
	}
	where := a.where()
	late := fmt.Errorf("%s did not answer within %s (--timeout): check that ferry-controller is running there and not overloaded, or try again with a longer --timeout", where, limit)
	s, ok := status.FromError(err)
	if !ok {
		if errors.Is(err, context.DeadlineExceeded) {
			return late
		}
		return err
	}
	switch s.Code() {
	case codes.DeadlineExceeded:
		return late
	case codes.Canceled:
		if errors.Is(err, context.Canceled) || strings.Contains(s.Message(), "context canceled") {
			return errors.New("interrupted")
		}
	case codes.Unavailable:
		cause, hung := transportCause(s.Message())
		if hung {
			return late
		}
		if cause != "" {
			return fmt.Errorf("cannot reach %s: %s; check that ferry-controller is running and listening there, and that the credential file %s names the right address", where, cause, a.configPath)
		}
	}
	return err
}

// transportCause reads what gRPC says when a connection fails ("connection
// error: desc = \"transport: Error while dialing: dial tcp ...: connect:
// connection refused\"") and says it in words. hung reports a handshake
// that ran out of time (a controller that accepts but does not answer).
// An empty cause means the message is not a transport failure: the
// controller itself answered "unavailable".
func transportCause(msg string) (cause string, hung bool) {
	m := strings.ToLower(msg)
	switch {
	case !strings.Contains(m, "transport") && !strings.Contains(m, "connection") && !strings.Contains(m, "dial"):
		return "", false
	case strings.Contains(m, "handshake failed") && strings.Contains(m, "deadline exceeded"):
		return "", true
	case strings.Contains(m, "connection refused"):
		return "connection refused (nothing listens on that address)", false
	case strings.Contains(m, "no such host"):
		return "its host name does not resolve", false
	case strings.Contains(m, "no route to host"), strings.Contains(m, "network is unreachable"):
		return "no network route to it", false
	case strings.Contains(m, "i/o timeout"):
		return "the connection timed out", false
	case strings.Contains(m, "certificate"), strings.Contains(m, "x509"), strings.Contains(m, "tls:"):
		return "the TLS handshake failed (" + lastPart(msg) + "); the credential's CA or certificate does not match this controller, or it expired", false
	case strings.Contains(m, "server preface"), strings.Contains(m, "eof"):
		return "the connection was closed before TLS completed; is that ferry-controller's gRPC port?", false
	}
	return "the connection failed (" + lastPart(msg) + ")", false
}

// lastPart is the innermost reason of a gRPC transport message, without
// its quoting: `... dial tcp 10.0.0.1:7443: connect: connection reset"` is
// "connection reset".
func lastPart(msg string) string {
	msg = strings.Trim(msg, `"`)
	if i := strings.LastIndex(msg, ": "); i >= 0 {
		msg = msg[i+2:]
	}
	return strings.Trim(msg, `" `)
}

// watch runs a server stream until it ends, handing each message to each.
// A stream cut by the controller going away (a restart, a lost link) is
// opened again once the controller is back, after a line on stderr: a
// watch lasts until it ends or is interrupted, not until the first
// restart. The first open is not retried: a wrong address or credential
// is reported at once.
func watch[M any](ctx context.Context, a *app, open func(context.Context, ...grpc.CallOption) (grpc.ServerStreamingClient[M], error), each func(*M) error) error {
	stream, err := open(ctx)
	if err != nil {
		return a.reach(err, a.timeout)
	}
	lost := false
	for {
		m, err := stream.Recv()
		switch {
		case err == nil:
			if lost {
				fmt.Fprintln(a.stderr, "reconnected; watching again")
				lost = false
			}
			if err := each(m); err != nil {
				return err
			}
			continue
		case errors.Is(err, io.EOF):
			return nil
		case status.Code(err) != codes.Unavailable || ctx.Err() != nil:
			return a.reach(err, a.timeout)
		}
		if !lost {
			fmt.Fprintf(a.stderr, "lost %s (%s); reconnecting...\n", a.where(), lastPart(status.Convert(err).Message()))
			lost = true
		}
		// WaitForReady: the new stream waits for the connection to come
		// back instead of failing while the controller is still down.
		if stream, err = open(ctx, grpc.WaitForReady(true)); err != nil {
			return a.reach(err, a.timeout)
		}
	}
}

func (a *app) where() string {
	if a.cred != nil {
		return "the controller at " + a.cred.Controller
	}
	return "the controller"
}
