package e2e_test

// Trust boundaries of issue 11 with the built binaries: a revoked admin's
// open watch ends (finding 7), enrollments are audited under the token's
// ID and never its secret (finding 8), and a node cannot bloat the store
// with labels (finding 2). The subtests share one controller.

import (
	"context"
	"encoding/json"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferrydeploy/ferry/agent/integration/e2e"
)

// revokedWatchEnds bounds how long an open watch outlives the revocation
// of its credential.
const revokedWatchEnds = 5 * time.Second

func TestE2ETrust(t *testing.T) {
	t.Parallel()
	h := e2e.New(t)
	h.StartController(e2e.ControllerOptions{HeartbeatInterval: hb})

	t.Run("revocation ends an open watch", func(t *testing.T) {
		h := h.Sub(t)
		alice := filepath.Join(h.Dir(), "alice.yaml")
		h.MustCtl("cert", "issue", "--admin", "alice", "--out", alice)

		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		watch := exec.CommandContext(ctx, h.Bin(e2e.CtlBinary), "--config", alice, "nodes", "-w")
		watch.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		watch.Cancel = func() error { return syscall.Kill(-watch.Process.Pid, syscall.SIGKILL) }
		// A node to watch, so the watch prints a line once it is open.
		h.NewAgent("watched-1", e2e.AgentOptions{}).MustEnroll(h.Token("staging", 1))
		var stdout, stderr syncBuffer // rollout_test.go
		watch.Stdout, watch.Stderr = &stdout, &stderr
		if err := watch.Start(); err != nil {
			t.Fatalf("start ferryctl nodes -w: %v", err)
		}
		done := make(chan error, 1)
		go func() { done <- watch.Wait() }()
		h.WaitFor("alice's watch to list watched-1", 10*time.Second, func() (bool, string) {
			select {
			case err := <-done:
				t.Fatalf("watch ended before the revocation: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
			default:
			}
			return strings.Contains(stdout.String(), "watched-1"), "stdout so far: " + stdout.String()
		})

		revoked := time.Now() // the revoke command's own run counts
		h.MustCtl("cert", "revoke", "--admin", "alice")
		var err error
		select {
		case err = <-done:
		case <-time.After(revokedWatchEnds):
			t.Fatalf("alice's watch still running %v after her credential was revoked\nstderr:\n%s", revokedWatchEnds, stderr.String())
		}
		took := time.Since(revoked)
		t.Logf("watch ended %v after the revocation began; it said: %s", took.Round(time.Millisecond), strings.TrimSpace(stderr.String()))
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() <= 0 {
			t.Errorf("watch ended with %v, want a non-zero exit code\nstderr:\n%s", err, stderr.String())
		}
		if !strings.Contains(stderr.String(), "was revoked") {
			t.Errorf("watch's stderr does not say the credential was revoked:\n%s", stderr.String())
		}
	})

	t.Run("enrollments are audited", func(t *testing.T) {
		h := h.Sub(t)
		tok := h.Token("staging", 0)
		h.NewAgent("audited-1", e2e.AgentOptions{}).MustEnroll(tok)
		// The same token ID with another secret: the last character changed.
		wrong, last := tok, tok.Secret[len(tok.Secret)-1]
		wrong.Secret = tok.Secret[:len(tok.Secret)-1] + map[bool]string{true: "1", false: "0"}[last == '0']
		if r := h.NewAgent("audited-2", e2e.AgentOptions{}).Enroll(wrong); r.Exit == 0 {
			t.Fatalf("enroll with a wrong secret succeeded:\n%s", r)
		}

		out := h.MustCtl("audit", "-o", "json")
		for _, secret := range []string{tok.Secret, wrong.Secret} {
			if strings.Contains(out, secret) {
				t.Errorf("ferryctl audit shows a token secret:\n%s", out)
			}
		}
		events := auditEvents(t, out)
		enrolled, refused := findEnroll(events, "audited-1"), findEnroll(events, "audited-2")
		t.Logf("audit: enrolled %+v; refused %+v", enrolled, refused)
		switch {
		case enrolled == nil:
			t.Errorf("no node.enroll entry for audited-1 in\n%s", out)
		case !strings.Contains(enrolled.Actor, tok.ID):
			t.Errorf("enrollment of audited-1: actor %q does not name token %s", enrolled.Actor, tok.ID)
		case enrolled.Outcome != "" && enrolled.Outcome != "ok":
			t.Errorf("enrollment of audited-1: outcome %q, want success", enrolled.Outcome)
		}
		switch {
		case refused == nil:
			t.Errorf("no node.enroll entry for the refused audited-2 in\n%s", out)
		case refused.Outcome == "" || refused.Outcome == "ok":
			t.Errorf("refused enrollment of audited-2: outcome %q, want the refusal", refused.Outcome)
		case !strings.Contains(refused.Actor, tok.ID):
			t.Errorf("refused enrollment of audited-2: actor %q does not name token %s", refused.Actor, tok.ID)
		}
	})

	t.Run("label bloat refused", func(t *testing.T) {
		h := h.Sub(t)
		tok := h.CreateToken(e2e.TokenOptions{Group: "staging", AllowLabels: []string{"big=*"}})
		before := h.MustCtl("nodes", "--all", "-o", "json")

		many := map[string]string{}
		for i := range 40 {
			many[strings.Repeat("k", 1+i%20)+string(rune('a'+i/20))] = "v"
		}
		for _, tc := range []struct {
			name   string
			labels map[string]string
			limit  string
		}{
			{"a 120 KB value", map[string]string{"big": strings.Repeat("x", 120<<10)}, "at most 63 characters"},
			{"40 labels", many, "at most 32"},
		} {
			start := time.Now()
			a := h.NewAgent("bloat-"+strings.ReplaceAll(tc.name, " ", "-"), e2e.AgentOptions{Labels: tc.labels})
			r := a.Enroll(tok)
			t.Logf("%s: refused in %v", tc.name, time.Since(start).Round(time.Millisecond))
			if r.Exit == 0 || !strings.Contains(r.Stderr, tc.limit) {
				t.Errorf("enroll with %s: want refused naming the limit (%q)\n%s", tc.name, tc.limit, clipResult(r))
			}
			if files := a.StateFiles(); len(files) != 0 {
				t.Errorf("refused enrollment with %s wrote %v to the state dir", tc.name, files)
			}
		}
		if after := h.MustCtl("nodes", "--all", "-o", "json"); after != before {
			t.Errorf("nodes changed by refused enrollments:\nbefore:\n%s\nafter:\n%s", before, after)
		}
		h.MustCtl("nodes")
	})
}

type auditEvent struct {
	Actor   string `json:"actor"`
	Action  string `json:"action"`
	Target  string `json:"target"`
	Outcome string `json:"outcome"`
	Detail  string `json:"detail"`
}

func auditEvents(t *testing.T, out string) []auditEvent {
	t.Helper()
	var resp struct {
		Events []auditEvent `json:"events"`
	}
	if err := json.Unmarshal([]byte(out), &resp); err != nil {
		t.Fatalf("ferryctl audit -o json: %v\n%s", err, out)
	}
	return resp.Events
}

func findEnroll(events []auditEvent, nodeID string) *auditEvent {
	for i, ev := range events {
		if ev.Action == "node.enroll" && ev.Target == nodeID {
			return &events[i]
		}
	}
	return nil
}

// clipResult shortens a result whose output echoes a huge argument.
func clipResult(r e2e.Result) string {
	s := r.String()
	if len(s) > 2000 {
		return s[:2000] + "…"
	}
	return s
}
