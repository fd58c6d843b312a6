package agent

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The log line that says where the agent goes next says why it left, in
// words; gRPC's error rides beside it.
func TestLostReason(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{status.Error(codes.Unavailable, `connection error: desc = "transport: Error while dialing: dial tcp 10.0.0.1:7443: connect: connection refused"`),
			"nothing listens at that address (connection refused): the controller is down or restarting"},
		{status.Error(codes.Unavailable, `connection error: desc = "transport: Error while dialing: dial tcp: lookup ctl.example: no such host"`),
			"its name does not resolve (no such host)"},
		{status.Error(codes.Unavailable, `connection error: desc = "transport: Error while dialing: dial tcp 10.0.0.1:7443: i/o timeout"`),
			"no answer (timeout)"},
		{status.Error(codes.Unavailable, "error reading from server: EOF"), "the connection dropped"},
		{status.Error(codes.Unavailable, `connection error: desc = "transport: authentication handshake failed: tls: failed to verify certificate: x509: certificate signed by unknown authority"`),
			"the TLS handshake failed: "},
		{status.Error(codes.Unavailable, "controller is shutting down; reconnect later"), "controller is shutting down; reconnect later"},
		{io.EOF, "the controller closed the stream"},
		{fmt.Errorf("wrapped: %w", errNoWelcome), "the controller did not answer within 10s"},
		{errors.New("controller did not answer the hello with a welcome"), "controller did not answer the hello with a welcome"},
	} {
		if got := lostReason(tc.err); !strings.Contains(got, tc.want) {
			t.Errorf("lostReason(%v) = %q, want it to contain %q", tc.err, got, tc.want)
		}
	}
}
