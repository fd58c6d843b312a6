package agent

import (
	"errors"
	"io"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// lostReason says for a person why a stream to the controller ended or
// never came up, for the log line that says where the agent goes next;
// the line carries gRPC's own error beside it.
func lostReason(err error) string {
	if errors.Is(err, errNoWelcome) {
		return "the controller did not answer within " + connectTimeout.String() + ": it is overloaded, or a firewall drops the traffic"
	}
	if errors.Is(err, io.EOF) {
		return "the controller closed the stream"
	}
	st, ok := status.FromError(err)
	if !ok {
		return err.Error()
	}
	msg := st.Message()
	switch {
	case st.Code() != codes.Unavailable:
		return msg
	case strings.Contains(msg, "connection refused"):
		return "nothing listens at that address (connection refused): the controller is down or restarting"
	case strings.Contains(msg, "no such host"):
		return "its name does not resolve (no such host): check DNS and the address"
	case strings.Contains(msg, "i/o timeout"), strings.Contains(msg, "deadline exceeded"):
		return "no answer (timeout): the host is down, or a firewall or route drops the traffic"
	case strings.Contains(msg, "no route to host"), strings.Contains(msg, "network is unreachable"):
		return "no route to the controller's host"
	case strings.Contains(msg, "connection reset"), strings.Contains(msg, "error reading from server"), strings.Contains(msg, "EOF"):
		return "the connection dropped: the controller stopped, or the network cut it"
	case strings.Contains(msg, "tls:"), strings.Contains(msg, "x509:"), strings.Contains(msg, "handshake"):
		return "the TLS handshake failed: " + msg
	case strings.Contains(msg, "connection error"), strings.Contains(msg, "transport"):
		return "the controller is unavailable: " + msg
	}
	return msg // the controller's own words ("controller is shutting down; reconnect later")
}
