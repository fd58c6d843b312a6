package agent

import (
	"errors"
	"log/slog"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrydeploy/ferry/agent/internal/install"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

const (
	accepted  = ferryv1.JobPhase_JOB_PHASE_ACCEPTED
	succeeded = ferryv1.JobPhase_JOB_PHASE_SUCCEEDED
	failed    = ferryv1.JobPhase_JOB_PHASE_FAILED
)

// The agent runs one job at a time: jobs arriving while one runs wait
// their turn, a queued job can be cancelled without ever starting, a job
// sent again while it runs is not run twice, and every job's outcome is
// reported on the stream.
func TestJobsRunOneAtATime(t *testing.T) {
	ta := newTestAgent(t, agentOptions{})
	ta.run()
	s := ta.stream()

	s.send(t, jobMsg(fileJob("first", "/etc/first", "one\n")))
	if u := s.result(t, "first"); u.GetPhase() != succeeded {
		t.Fatalf("job first: %s %q, want succeeded", u.GetPhase(), u.GetMessage())
	}

	dl := ta.startTool(s)
	s.send(t, jobMsg(fileJob("queued", "/etc/queued", "two\n")))
	s.send(t, jobMsg(fileJob("dropped", "/etc/dropped", "three\n")))
	s.send(t, cancelMsg("dropped"))
	s.send(t, jobMsg(toolJob(toolDigest))) // the controller re-sends the running job
	// A job that already ran gets its recorded result again, at once: once
	// it is back, the agent has taken every message above.
	s.send(t, jobMsg(fileJob("first", "/etc/first", "one\n")))
	if u := s.result(t, "first"); u.GetPhase() != succeeded {
		t.Fatalf("job first sent again: %s %q, want its recorded success", u.GetPhase(), u.GetMessage())
	}
	for _, id := range []string{"queued", "dropped"} {
		if us := s.updatesOf(id); len(us) != 0 {
			t.Errorf("job %s reported %s while the tool job was still running, want it queued", id, us[0].GetPhase())
		}
	}

	dl.finish <- fetched{err: errors.New("artifact tool-1.0.tar.gz: controller unreachable")}
	tool := s.result(t, "tool")
	if tool.GetPhase() != failed || tool.GetFailedStep() != "download tool-1.0.tar.gz" || !strings.Contains(tool.GetMessage(), "controller unreachable") {
		t.Errorf("job tool: %s at %q: %q; want failed at the download, saying why", tool.GetPhase(), tool.GetFailedStep(), tool.GetMessage())
	}
	if u := s.result(t, "queued"); u.GetPhase() != succeeded {
		t.Errorf("job queued: %s %q, want succeeded", u.GetPhase(), u.GetMessage())
	}
	dropped := s.result(t, "dropped")
	if dropped.GetPhase() != failed || dropped.GetMessage() != "cancelled before it started; nothing was changed" {
		t.Errorf("job dropped: %s %q, want failed: cancelled before it started", dropped.GetPhase(), dropped.GetMessage())
	}

	// Whatever is still queued runs before a new job: once it is done, a
	// second run of the tool job would have shown.
	dl.finish <- fetched{err: errors.New("a second download of the tool")}
	s.send(t, jobMsg(fileJob("last", "/etc/last", "four\n")))
	s.result(t, "last")

	toolEnd := s.indexOf("tool", failed)
	if i := s.indexOf("queued", accepted); i < toolEnd {
		t.Errorf("job queued was accepted (update %d) before the tool job ended (update %d)", i, toolEnd)
	}
	if n := len(s.updatesOf("dropped")); n != 1 {
		t.Errorf("the cancelled job sent %d updates, want only its final one", n)
	}
	accepts := 0
	for _, u := range s.updatesOf("tool") {
		if u.GetPhase() == accepted {
			accepts++
		}
	}
	if accepts != 1 || dl.calls.Load() != 1 {
		t.Errorf("the tool job was accepted %d times and downloaded %d times, want once", accepts, dl.calls.Load())
	}
	for path, want := range map[string]string{"/etc/first": "one\n", "/etc/queued": "two\n"} {
		if got, ok := ta.file(path); !ok || got != want {
			t.Errorf("%s holds %q (exists: %v), want %q", path, got, ok, want)
		}
	}
	if _, ok := ta.file("/etc/dropped"); ok {
		t.Error("the cancelled job wrote /etc/dropped")
	}
}

// A cancel stops a running job; it is reported failed and nothing is
// installed. (A queued job's cancel is in TestJobsRunOneAtATime.)
func TestCancelRunningJob(t *testing.T) {
	ta := newTestAgent(t, agentOptions{})
	ta.run()
	s := ta.stream()
	ta.startTool(s)

	s.send(t, cancelMsg("tool"))
	u := s.result(t, "tool")
	if u.GetPhase() != failed || u.GetFailedStep() != "download tool-1.0.tar.gz" || !strings.Contains(u.GetMessage(), "context canceled") {
		t.Errorf("cancelled job: %s at %q: %q, want failed at the download, cancelled", u.GetPhase(), u.GetFailedStep(), u.GetMessage())
	}
	if _, ok := ta.file("/opt/tool/bin/tool"); ok {
		t.Error("the cancelled job installed the tool")
	}
	// The agent is free for the next job.
	s.send(t, jobMsg(fileJob("motd", "/etc/motd", "hello\n")))
	if u := s.result(t, "motd"); u.GetPhase() != succeeded {
		t.Errorf("job after the cancelled one: %s %q, want succeeded", u.GetPhase(), u.GetMessage())
	}
}

// A job outlives the stream it came on. Its result goes out on whichever
// stream is up when it ends; if none is, the next hello carries it, so the
// controller learns it without running the job again.
func TestJobResultSurvivesReconnect(t *testing.T) {
	tests := []struct {
		name string
		// endsOffline: the job ends while the agent waits to reconnect.
		endsOffline bool
	}{
		{"ends on the next stream", false},
		{"ends between streams", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ta := newTestAgent(t, agentOptions{})
			ta.run()
			first := ta.stream()
			dl := ta.startTool(first)

			first.end <- status.Error(codes.Unavailable, "replaced by a newer stream from the same node")
			ta.nextWait()
			if tt.endsOffline {
				dl.finish <- fetched{path: toolArchive(t)}
				waitClosed(t, dl.released, "the end of the tool job")
			}
			ta.redial()
			second := ta.stream()

			var res *ferryv1.JobUpdate
			if tt.endsOffline {
				for _, u := range second.hello.GetRecentJobs() {
					if u.GetJobId() == "tool" {
						res = u
					}
				}
				if res == nil {
					t.Fatalf("the hello after the job ended offline carries results %v, want the tool job's", second.hello.GetRecentJobs())
				}
			} else {
				dl.finish <- fetched{path: toolArchive(t)}
				res = second.result(t, "tool")
			}
			if res.GetPhase() != succeeded {
				t.Errorf("tool job: %s %q, want succeeded", res.GetPhase(), res.GetMessage())
			}
			if got, ok := ta.file("/opt/tool/bin/tool"); !ok || !strings.Contains(got, "tool 1.0") {
				t.Errorf("/opt/tool/bin/tool holds %q (exists: %v), want the tool", got, ok)
			}

			// The controller re-sends the job: the agent answers with the
			// result instead of running it again.
			second.send(t, jobMsg(toolJob(toolDigest)))
			if u := second.result(t, "tool"); u.GetPhase() != succeeded {
				t.Errorf("tool job sent again: %s, want its recorded success", u.GetPhase())
			}
			if n := dl.calls.Load(); n != 1 {
				t.Errorf("the artifact was fetched %d times, want once", n)
			}
		})
	}
}

// A failed download is a final result like any other: kept in the
// agent's state before it is sent (the stream may be down, as it is
// here), carried by the next hello, given again to a job sent again
// without downloading again, and still there for a restarted agent.
func TestDownloadFailureIsRecorded(t *testing.T) {
	ta := newTestAgent(t, agentOptions{})
	ta.run()
	first := ta.stream()
	dl := ta.startTool(first)

	first.end <- status.Error(codes.Unavailable, "the link broke")
	ta.nextWait()
	dl.finish <- fetched{err: errors.New("artifact tool-1.0.tar.gz: needs 65.0 MiB in /var/lib/ferry-agent, 12.3 MiB free; free space or move the state dir")}
	waitClosed(t, dl.released, "the end of the tool job")
	ta.redial()
	second := ta.stream()

	var res *ferryv1.JobUpdate
	for _, u := range second.hello.GetRecentJobs() {
		if u.GetJobId() == "tool" {
			res = u
		}
	}
	if res.GetPhase() != failed || res.GetFailedStep() != "download tool-1.0.tar.gz" || !strings.Contains(res.GetMessage(), "12.3 MiB free") {
		t.Fatalf("the hello after the download failed carries %v for the tool job, want its failure at the download", res)
	}

	second.send(t, jobMsg(toolJob(toolDigest)))
	if u := second.result(t, "tool"); u.GetPhase() != failed || u.GetMessage() != res.GetMessage() {
		t.Errorf("tool job sent again: %s %q, want its recorded failure", u.GetPhase(), u.GetMessage())
	}
	if n := dl.calls.Load(); n != 1 {
		t.Errorf("the artifact was fetched %d times, want once", n)
	}
	for _, u := range second.updatesOf("tool") {
		if u.GetPhase() == accepted {
			t.Error("the tool job was accepted again after its recorded failure")
		}
	}

	inst, err := install.New(install.Config{Root: ta.root, StateDir: ta.cfg.StateDir, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if u, ok := inst.JobResult("tool"); !ok || u.GetMessage() != res.GetMessage() {
		t.Errorf("a restarted agent's installer has %v for the tool job (found %v), want the recorded failure", u, ok)
	}
}
