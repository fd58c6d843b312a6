package agent

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrydeploy/ferry/agent/internal/agentstatus"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// TestDriftReachesTheController: a file of an installed tree changed by
// hand is found by the periodic check, carried by the next heartbeat and
// written to status.json for ferry-agent doctor.
func TestDriftReachesTheController(t *testing.T) {
	ta := newTestAgent(t, agentOptions{config: func(c *Config) { c.DriftInterval = 20 * time.Millisecond }})
	ta.run()
	first := ta.stream()
	dl := ta.startTool(first)
	dl.finish <- fetched{path: toolArchive(t)}
	if u := first.result(t, "tool"); u.GetPhase() != succeeded {
		t.Fatalf("tool job: %s %q", u.GetPhase(), u.GetMessage())
	}
	waitDrift := func(what string, ok func(*ferryv1.DriftReport) bool) {
		t.Helper()
		deadline := time.Now().Add(waitFor)
		for !ok(ta.drift.Load()) {
			if time.Now().After(deadline) {
				t.Fatalf("no drift check found %s within %v: last %v", what, waitFor, ta.drift.Load())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitDrift("the tool intact", func(r *ferryv1.DriftReport) bool { return r.GetChecked() == 1 && len(r.GetPackages()) == 0 })

	if err := os.WriteFile(filepath.Join(ta.root, "opt/tool/bin/tool"), []byte("#!/bin/sh\necho edited\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	waitDrift("the edit", func(r *ferryv1.DriftReport) bool { return len(r.GetPackages()) == 1 })

	// Heartbeats are an hour apart here: reconnect for the next one.
	first.end <- status.Error(codes.Unavailable, "controller restarting")
	ta.nextWait()
	st, err := agentstatus.Read(ta.cfg.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	if d, err := st.DriftReport(); err != nil || st.Connected || len(d.GetPackages()) != 1 {
		t.Errorf("status.json after the stream ended: connected %v, drift %v (%v)", st.Connected, d, err)
	}
	ta.redial()
	var second *agentStream
	select {
	case second = <-ta.ctl.streams:
	case <-time.After(waitFor):
		t.Fatal("no second stream")
	}
	var hb *ferryv1.Heartbeat
	for hb == nil {
		hb = second.next(t).GetHeartbeat()
	}
	p := hb.GetDrift().GetPackages()
	if len(p) != 1 || p[0].GetName() != "tool" || p[0].GetVersion() != "1.0" || p[0].GetChanged() != 1 || len(p[0].GetExamples()) != 1 || p[0].GetExamples()[0] != "/opt/tool/bin/tool: size 22, want 24" {
		t.Fatalf("heartbeat drift %v", hb.GetDrift())
	}
}
