package doctor

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrydeploy/ferry/agent/internal/agentstatus"
)

func TestChecksFromTheDaemonsStatus(t *testing.T) {
	now := time.Date(2026, 12, 2, 8, 0, 0, 0, time.UTC)
	cfg := Config{StateDir: "/var/lib/ferry-agent", Now: func() time.Time { return now }}
	fresh := &agentstatus.Status{WrittenAt: now.Add(-10 * time.Second), Controller: "ctl:7443", Connected: true, LastWelcome: now.Add(-time.Hour), Gossip: true, GossipAlive: 3, GossipMembers: 3}
	tests := []struct {
		name   string
		got    Result
		ok     bool
		detail string
	}{
		{"daemon up", checkDaemon(cfg, fresh, nil), true, "running, connected to ctl:7443"},
		{"daemon never ran", checkDaemon(cfg, nil, agentstatus.ErrNone), false, "has not run with this state dir"},
		{"daemon stopped", checkDaemon(cfg, &agentstatus.Status{WrittenAt: now.Add(-time.Hour)}, nil), false, "not running: its status was last written 1h0m0s ago"},
		{"stream down", checkDaemon(cfg, &agentstatus.Status{WrittenAt: now, Controller: "ctl:7443"}, nil), false, "its stream to ctl:7443 is down"},
		{"several controllers, connected to one", checkDaemon(cfg, &agentstatus.Status{WrittenAt: now, Controller: "b:7443", Controllers: []string{"a:7443", "b:7443"}, Connected: true, LastWelcome: now}, nil),
			true, "running, connected to b:7443 since 2026-12-02T08:00:00Z (controllers: a:7443, b:7443)"},
		{"several controllers, none up", checkDaemon(cfg, &agentstatus.Status{WrittenAt: now, Controller: "ctl.example:7443 (10.0.0.2:7443)", Controllers: []string{"ctl.example:7443"}}, nil),
			false, "its stream to ctl.example:7443 (10.0.0.2:7443) is down"},
		{"several controllers, all down", checkDaemon(cfg, &agentstatus.Status{WrittenAt: now, Controller: "b:7443", Controllers: []string{"a:7443", "b:7443"}}, nil),
			false, "not connected to any of its controllers (a:7443, b:7443); it is trying b:7443"},
		{"clock fine", checkClock(&agentstatus.Status{ClockSkew: 2 * time.Second}), true, "within 2s of"},
		{"clock behind", checkClock(&agentstatus.Status{ClockSkew: 5 * time.Minute}), false, "5m0s behind the controller's"},
		{"clock ahead", checkClock(&agentstatus.Status{ClockSkew: -time.Hour}), false, "1h0m0s ahead of the controller's"},
		{"gossip fine", checkGossip(fresh), true, "3 members alive of 3 known"},
		{"gossip alone", checkGossip(&agentstatus.Status{Gossip: true, GossipAlive: 1, GossipMembers: 4}), false, "sees no peer alive (4 members known)"},
		{"gossip off", checkGossip(&agentstatus.Status{}), true, "off"},
		{"visudo absent", checkVisudo(Config{Visudo: "/nonexistent/visudo"}), false, "no such file"},
		{"visudo there", checkVisudo(Config{Visudo: os.Args[0]}), true, os.Args[0]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got.OK != tt.ok || !strings.Contains(tt.got.Detail, tt.detail) {
				t.Errorf("%+v, want ok=%v and %q", tt.got, tt.ok, tt.detail)
			}
			if !tt.got.OK && tt.got.Fix == "" {
				t.Errorf("a problem without a fix: %+v", tt.got)
			}
		})
	}
}

func TestRunOnANodeNeverEnrolled(t *testing.T) {
	dir := t.TempDir()
	var out bytes.Buffer
	n := Run(context.Background(), Config{StateDir: dir, Root: t.TempDir(), Visudo: os.Args[0], MinFree: 1}, &out)
	got := out.String()
	if n != 1 || !strings.Contains(got, "PROBLEM  identity: this node is not enrolled: "+dir+" holds no identity\n         fix: enroll it: ferry-agent enroll") ||
		!strings.Contains(got, "ok       installed files: 0 packages checked") || !strings.Contains(got, "ok       disk ") ||
		!strings.HasSuffix(got, "1 of 4 checks found a problem\n") {
		t.Fatalf("%d problems:\n%s", n, got)
	}
	if _, err := os.Stat(filepath.Join(dir, "install")); !os.IsNotExist(err) {
		t.Errorf("doctor created %s/install: it must only read", dir)
	}
}

func TestPlural(t *testing.T) {
	for n, want := range map[int]string{0: "0 entries", 1: "1 entry", 2: "2 entries"} {
		if got := plural(n, "entry"); got != want {
			t.Errorf("plural(%d) = %q", n, got)
		}
	}
	if got := plural(3, "package"); got != "3 packages" {
		t.Errorf("plural(3, package) = %q", got)
	}
}
