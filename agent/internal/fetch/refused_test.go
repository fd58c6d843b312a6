package fetch

import (
	"context"
	"errors"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrydeploy/ferry/shared/pki/pkitest"
)

// grpcWords are what gRPC wraps a status in; a job's message must not
// show them to an operator.
var grpcWords = []string{"rpc error", "code = ", "desc = "}

// A download the controller refuses ends at once (no retries) with an
// error that reads as the controller's reason and what to do, matches
// ErrRefused and still carries the status code.
func TestDownloadRefusalsReadAsSentences(t *testing.T) {
	p := pkitest.New(t)
	fake := newFake()
	digest := fake.add(randomBytes(7, 1000))
	f := newFetcher(t, t.TempDir(), dial(t, p, serve(t, p, fake)), nil)

	cases := []struct {
		code   codes.Code
		reason string // the controller's message
		advice string // part of what the agent adds
	}{
		{codes.PermissionDenied, "node stage-1 has no job that uses artifact " + digest + "; a node downloads only the artifacts of the rollout jobs sent to it", "`ferryctl rollout status`"},
		{codes.Unauthenticated, "certificate 12345 is no longer valid for node stage-1", "enroll the node again"},
		{codes.InvalidArgument, "download artifact: digest must be sha256:<64 lowercase hex>", "`ferryctl package apply`"},
		{codes.Unimplemented, "this controller has no artifact store", "same version"},
	}
	for _, tc := range cases {
		t.Run(tc.code.String(), func(t *testing.T) {
			fake.mu.Lock()
			fake.refuse = status.Error(tc.code, tc.reason)
			fake.mu.Unlock()
			before := fake.streams.Load()
			_, err := f.Ensure(context.Background(), digest, 1000, nil)
			if err == nil {
				t.Fatal("Ensure succeeded, want the refusal")
			}
			msg := err.Error()
			t.Logf("job message: %s", msg)
			if !errors.Is(err, ErrRefused) || status.Code(err) != tc.code {
				t.Errorf("err matches ErrRefused: %v, has code %s; want ErrRefused and %s", errors.Is(err, ErrRefused), status.Code(err), tc.code)
			}
			want := "download of artifact " + digest + " refused by the controller: " + tc.reason + "; "
			if !strings.HasPrefix(msg, want) || !strings.Contains(msg, tc.advice) {
				t.Errorf("message %q\nwant it to start %q and to say %q", msg, want, tc.advice)
			}
			for _, w := range grpcWords {
				if strings.Contains(msg, w) {
					t.Errorf("message %q has gRPC's %q", msg, w)
				}
			}
			if n := fake.streams.Load() - before; n != 1 {
				t.Errorf("the refused download was tried %d times, want once", n)
			}
		})
	}
}

// A controller that cannot be reached is reported with the connection's
// own words, not gRPC's wrapper around them.
func TestUnreachableReadsAsASentence(t *testing.T) {
	p := pkitest.New(t)
	f := newFetcher(t, t.TempDir(), dial(t, p, "127.0.0.1:1"), func(c *Config) { c.Retries = 1 })
	_, err := f.Ensure(context.Background(), digestOf([]byte("x")), 1, nil)
	if !errors.Is(err, ErrUnreachable) {
		t.Fatalf("err = %v, want ErrUnreachable", err)
	}
	msg := err.Error()
	if !strings.Contains(msg, "the last one: ") || strings.Contains(msg, "rpc error") {
		t.Errorf("message %q: want the last failure's reason without gRPC's \"rpc error: code = …\"", msg)
	}
}
