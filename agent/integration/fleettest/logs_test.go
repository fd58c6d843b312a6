package fleettest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// jobLogs reads a node's stored output of a rollout.
func (f *fleet) jobLogs(rolloutID, nodeID string) []*ferryv1.LogRecord {
	f.t.Helper()
	return f.readLogs(&ferryv1.GetJobLogsRequest{RolloutId: rolloutID, NodeId: nodeID})
}

func (f *fleet) readLogs(req *ferryv1.GetJobLogsRequest) []*ferryv1.LogRecord {
	f.t.Helper()
	out, err := f.readLogsErr(req)
	if err != nil {
		f.t.Fatalf("read the logs %v: %v", req, err)
	}
	return out
}

func (f *fleet) readLogsErr(req *ferryv1.GetJobLogsRequest) ([]*ferryv1.LogRecord, error) {
	s, err := ferryv1.NewLogServiceClient(f.admin).GetJobLogs(context.Background(), req)
	if err != nil {
		return nil, err
	}
	var out []*ferryv1.LogRecord
	for {
		m, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, m.GetRecords()...)
	}
}

func hasLine(recs []*ferryv1.LogRecord, text string) bool {
	for _, r := range recs {
		if r.GetText() == text {
			return true
		}
	}
	return false
}

// waitLine polls the stored output until a line with text is there.
func (f *fleet) waitLine(rolloutID, nodeID, text string) []*ferryv1.LogRecord {
	f.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		recs := f.jobLogs(rolloutID, nodeID)
		if hasLine(recs, text) {
			return recs
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("the output of %s in %s lacks %q after 20s; it has %d lines", nodeID, rolloutID, text, len(recs))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestJobOutputSurvivesALinkDown cuts the agent's link to the controller in
// the middle of a check: the lines printed while it is down wait in the
// agent's buffer and all arrive, once each and in order, after it
// reconnects.
func TestJobOutputSurvivesALinkDown(t *testing.T) {
	f := newFleet(t, nil)
	a := f.enroll("l1", f.token("staging", 1))
	f.start(a)
	f.waitState(a.id, healthy, 5*time.Second)
	const lines = 300
	f.apply(`name: chatty
version: "1"
steps:
  - check: {run: 'echo before; while [ ! -e "$FERRY_ROOT/gate" ]; do sleep 0.05; done; i=1; while [ $i -le ` + fmt.Sprint(lines) + ` ]; do echo "line $i"; i=$((i+1)); done; echo oops >&2; echo done; touch "$FERRY_ROOT/finished"', expect: done}
`)
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	resp, err := ferryv1.NewRolloutServiceClient(f.admin).CreateRollout(ctx, &ferryv1.CreateRolloutRequest{PackageName: "chatty", PackageVersion: "1", Target: &ferryv1.Target{Group: "staging"}, Strategy: fast()})
	if err != nil {
		t.Fatal(err)
	}
	id := resp.Rollout.Id
	// A follower from the start sees every line and returns when the job
	// has ended.
	type followed struct {
		recs []*ferryv1.LogRecord
		err  error
	}
	follow := make(chan followed, 1)
	go func() {
		recs, err := f.readLogsErr(&ferryv1.GetJobLogsRequest{RolloutId: id, NodeId: a.id, Follow: true})
		follow <- followed{recs, err}
	}()
	f.waitLine(id, a.id, "before")

	a.proxy.cut()
	root := filepath.Join(f.dir, "roots", a.id)
	if err := os.WriteFile(filepath.Join(root, "gate"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(filepath.Join(root, "finished")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the check did not finish within 20s")
		}
	}
	if recs := f.jobLogs(id, a.id); hasLine(recs, "done") {
		t.Fatal("the controller has the check's last line though the link was cut before it was printed")
	}
	a.proxy.restore()
	if r := f.wait(ctx, id); r.GetState() != ferryv1.RolloutState_ROLLOUT_STATE_SUCCEEDED {
		t.Fatalf("rollout ended %s: %s", r.GetState(), r.GetMessage())
	}
	recs := f.waitLine(id, a.id, "done")
	for deadline := time.Now().Add(20 * time.Second); !strings.HasPrefix(recs[len(recs)-1].GetText(), "job succeeded: "); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the output's last line is %q, want the job's end", recs[len(recs)-1].GetText())
		}
		recs = f.jobLogs(id, a.id)
	}
	next, last := 1, uint64(0)
	for _, r := range recs {
		if r.GetSeq() <= last || r.GetCutLines() > 0 {
			t.Errorf("line %d %q after line %d (cut %d): want one sequence without gaps", r.GetSeq(), r.GetText(), last, r.GetCutLines())
		}
		last = r.GetSeq()
		if want := fmt.Sprintf("line %d", next); r.GetText() == want {
			if r.GetStream() != ferryv1.LogStream_LOG_STREAM_STDOUT || !strings.HasPrefix(r.GetStep(), "check: ") {
				t.Errorf("%q: stream %s step %q, want stdout of the check", want, r.GetStream(), r.GetStep())
			}
			next++
		} else if strings.HasPrefix(r.GetText(), "line ") {
			t.Errorf("%q where %q was due", r.GetText(), want)
		}
		if r.GetText() == "oops" && r.GetStream() != ferryv1.LogStream_LOG_STREAM_STDERR {
			t.Errorf("oops is on %s, want stderr", r.GetStream())
		}
	}
	if next != lines+1 {
		t.Errorf("%d of the %d lines arrived", next-1, lines)
	}
	select {
	case fl := <-follow:
		if fl.err != nil || len(fl.recs) != len(recs) {
			t.Errorf("the follower got %d lines (%v), want the %d stored", len(fl.recs), fl.err, len(recs))
		}
	case <-time.After(20 * time.Second):
		t.Error("the follower did not return within 20s of the job's end")
	}
}

// TestJobOutputIsStoredOnlyUnderTheNodesOwnJobs speaks for l2 with its own
// certificate: output it sends under l1's job is acknowledged (so an agent
// stops sending it) but not stored, output under its own job is stored even
// after the rollout ended (a node that was offline sends it late), and a
// message over the limits ends the stream.
func TestJobOutputIsStoredOnlyUnderTheNodesOwnJobs(t *testing.T) {
	f := newFleet(t, nil)
	tok := f.token("staging", 2)
	l1, l2 := f.enroll("l1", tok), f.enroll("l2", tok)
	f.start(l1)
	f.start(l2)
	f.waitState(l1.id, healthy, 5*time.Second)
	f.waitState(l2.id, healthy, 5*time.Second)
	f.apply(motdPackage("1.0", `echo "$MOTD_VERSION"`))
	r := f.rollout(&ferryv1.CreateRolloutRequest{PackageName: "motd", PackageVersion: "1.0", Target: &ferryv1.Target{Group: "staging"}, Strategy: fast()})
	if r.State != ferryv1.RolloutState_ROLLOUT_STATE_SUCCEEDED {
		t.Fatalf("rollout ended %s: %s", r.State, r.Message)
	}
	// Filters: every node, one step, only failed nodes.
	all := f.readLogs(&ferryv1.GetJobLogsRequest{RolloutId: r.Id})
	nodes := map[string]bool{}
	for _, rec := range all {
		nodes[rec.GetNodeId()] = true
	}
	if !nodes["l1"] || !nodes["l2"] || len(nodes) != 2 {
		t.Errorf("the logs of every node name nodes %v, want l1 and l2", nodes)
	}
	steps := f.readLogs(&ferryv1.GetJobLogsRequest{RolloutId: r.Id, NodeId: "l1", Step: "FILE /etc"})
	if len(steps) == 0 {
		t.Error("--step 'FILE /etc' matched no line of the file step")
	}
	for _, rec := range steps {
		if rec.GetStep() != "file /etc/motd" || rec.GetNodeId() != "l1" {
			t.Errorf("--step 'FILE /etc' --node l1 sent %s [%s] %q", rec.GetNodeId(), rec.GetStep(), rec.GetText())
		}
	}
	if _, err := f.readLogsErr(&ferryv1.GetJobLogsRequest{RolloutId: r.Id, Failed: true}); status.Code(err) != codes.NotFound || !strings.Contains(err.Error(), "no node of rollout") {
		t.Errorf("--failed of a rollout without failures: %v, want NotFound saying no node failed", err)
	}
	l2.stop()

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := f.agentDownloads(l2).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	send := func(m *ferryv1.ConnectRequest) {
		t.Helper()
		if err := s.Send(m); err != nil {
			t.Fatal(err)
		}
	}
	ack := func() *ferryv1.JobLogAck {
		t.Helper()
		for {
			m, err := s.Recv()
			if err != nil {
				t.Fatalf("waiting for an acknowledgement: %v", err)
			}
			if a := m.GetLogAck(); a != nil {
				return a
			}
		}
	}
	logMsg := func(job string, recs ...*ferryv1.LogRecord) *ferryv1.ConnectRequest {
		return &ferryv1.ConnectRequest{Msg: &ferryv1.ConnectRequest_JobLog{JobLog: &ferryv1.JobLog{JobId: job, RolloutId: r.Id, Records: recs}}}
	}
	send(&ferryv1.ConnectRequest{Msg: &ferryv1.ConnectRequest_Hello{Hello: &ferryv1.AgentHello{AgentVersion: "test"}}})
	send(logMsg(r.Id+"/job/l1", &ferryv1.LogRecord{Seq: 1000, Text: "forged"}))
	if a := ack(); a.GetSeq() != 1000 {
		t.Errorf("output under another node's job: acknowledged up to %d, want 1000", a.GetSeq())
	}
	send(logMsg(r.Id+"/job/l2", &ferryv1.LogRecord{Seq: 1000, Text: "late line"}))
	if a := ack(); a.GetSeq() != 1000 || a.GetJobId() != r.Id+"/job/l2" {
		t.Errorf("late output of its own job: acknowledged %v", a)
	}
	if hasLine(f.jobLogs(r.Id, "l1"), "forged") {
		t.Error("l2 stored output under l1's job")
	}
	if !hasLine(f.jobLogs(r.Id, "l2"), "late line") {
		t.Error("l2's late output of its own job was not stored")
	}
	big := make([]*ferryv1.LogRecord, 1025)
	for k := range big {
		big[k] = &ferryv1.LogRecord{Seq: uint64(2000 + k), Text: "x"}
	}
	send(logMsg(r.Id+"/job/l2", big...))
	for {
		_, err := s.Recv()
		if err == nil {
			continue
		}
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "1025 lines") {
			t.Errorf("a message of 1025 lines ended the stream with %v, want InvalidArgument naming the count", err)
		}
		break
	}
}
