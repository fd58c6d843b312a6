package cli

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrydeploy/ferry/controller/controller"
	"github.com/ferrydeploy/ferry/controller/internal/credential"
)

// credentialFor copies the admin credential cfg with another controller
// address.
func credentialFor(t *testing.T, cfg, addr string) string {
	t.Helper()
	data, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "admin.yaml")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := credential.SetController(p, addr); err != nil {
		t.Fatal(err)
	}
	return p
}

// A controller that is not there, or accepts and never answers, is named
// with its address and what to check, within --timeout, in words.
func TestUnreachableController(t *testing.T) {
	cfg := startController(t)

	refused, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := refused.Addr().String()
	refused.Close()

	hung, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hung.Close()
	go func() {
		for {
			c, err := hung.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(io.Discard, c) }() // reads the hello, never answers
		}
	}()

	for _, tc := range []struct {
		name, addr string
		want       []string
	}{
		{"refused", closedAddr, []string{"Error: cannot reach the controller at " + closedAddr + ": connection refused", "check that ferry-controller is running"}},
		{"hung", hung.Addr().String(), []string{"Error: the controller at " + hung.Addr().String() + " did not answer within 1s (--timeout)", "longer --timeout"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := run(t, credentialFor(t, cfg, tc.addr), "--timeout", "1s", "nodes")
			if code != 1 || out != "" {
				t.Errorf("exit %d, stdout %q", code, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(errOut, w) {
					t.Errorf("stderr lacks %q:\n%s", w, errOut)
				}
			}
			for _, raw := range []string{"rpc error", "transport:", "deadline exceeded", "dial tcp"} {
				if strings.Contains(errOut, raw) {
					t.Errorf("stderr shows gRPC's words %q:\n%s", raw, errOut)
				}
			}
		})
	}
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader at once.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// waitFor polls until cond holds (the watch is a separate goroutine).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// `ferryctl nodes -w` outlives a controller restart: it says it lost the
// controller, reconnects when it is back, and goes on printing.
func TestWatchSurvivesRestart(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	dataDir := filepath.Join(t.TempDir(), "controller")
	start := func() (cfg string, stop func()) {
		ctl, err := controller.New(controller.Config{DataDir: dataDir, GRPCAddr: addr, HTTPAddr: "127.0.0.1:0", Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- ctl.Run(ctx) }()
		return ctl.AdminCredentialPath(), func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("controller: %v", err)
			}
		}
	}
	cfg, stop := start()
	tok := createToken(t, cfg, "--group", "staging")
	if _, err := newEnroller(t, dialAdmin(t, cfg)).enroll(tok, "n1", nil); err != nil {
		t.Fatal(err)
	}

	var out, errOut syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	code := make(chan int, 1)
	go func() { code <- Run(ctx, []string{"--config", cfg, "nodes", "-w"}, &out, &errOut) }()
	waitFor(t, "the first event", func() bool { return strings.Count(out.String(), " n1 ") == 1 })

	stop()
	waitFor(t, "the watch to notice", func() bool { return strings.Contains(errOut.String(), "lost the controller at "+addr) })
	_, stop = start()
	defer stop()
	waitFor(t, "the watch to reconnect", func() bool {
		return strings.Count(out.String(), " n1 ") == 2 && strings.Contains(errOut.String(), "reconnected; watching again")
	})
	cancel()
	if c := <-code; c != 1 || !strings.Contains(errOut.String(), "Error: interrupted") {
		t.Errorf("after cancel: exit %d\nstderr: %s", c, errOut.String())
	}
}
