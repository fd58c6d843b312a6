package cli

import (
	"bytes"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// JSON and YAML say what flags take: lowercase state words, Go durations,
// RFC 3339 times, numbers as numbers, fields in proto order.
func TestEmitVocabulary(t *testing.T) {
	at := time.Date(2026, 12, 2, 7, 0, 0, 0, time.UTC)
	canary := uint32(1)
	r := &ferryv1.Rollout{
		Id: "ro-1", PackageName: "go", State: ferryv1.RolloutState_ROLLOUT_STATE_ROLLED_BACK,
		Strategy:  &ferryv1.Strategy{Canary: &canary, OnFailure: ferryv1.FailureAction_FAILURE_ACTION_PAUSE, ProgressDeadline: durationpb.New(10 * time.Minute)},
		Nodes:     []*ferryv1.NodeJob{{NodeId: "n1", Outcome: ferryv1.NodeOutcome_NODE_OUTCOME_SUCCEEDED, BytesDone: 1 << 40}},
		CreatedAt: timestamppb.New(at),
	}
	for _, tc := range []struct{ format, want string }{
		{outJSON, `{
  "id": "ro-1",
  "package_name": "go",
  "strategy": {
    "canary": 1,
    "on_failure": "pause",
    "progress_deadline": "10m0s"
  },
  "state": "rolled_back",
  "nodes": [
    {
      "node_id": "n1",
      "outcome": "succeeded",
      "bytes_done": 1099511627776
    }
  ],
  "created_at": "2026-12-02T07:00:00Z"
}
`},
		{outYAML, `id: ro-1
package_name: go
strategy:
  canary: 1
  on_failure: pause
  progress_deadline: 10m0s
state: rolled_back
nodes:
  - node_id: n1
    outcome: succeeded
    bytes_done: 1099511627776
created_at: "2026-12-02T07:00:00Z"
`},
	} {
		t.Run(tc.format, func(t *testing.T) {
			var out bytes.Buffer
			a := &app{stdout: &out, output: tc.format}
			if err := a.emit(r); err != nil {
				t.Fatal(err)
			}
			if out.String() != tc.want {
				t.Errorf("got\n%s\nwant\n%s", out.String(), tc.want)
			}
		})
	}
}

// A stream of YAML documents is separated by "---"; a nil slice is an
// empty list, maps of messages are objects.
func TestEmitShapes(t *testing.T) {
	var out bytes.Buffer
	a := &app{stdout: &out, output: outYAML}
	for _, v := range []any{
		&ferryv1.NodeEvent{Id: "n1", State: ferryv1.NodeState_NODE_STATE_HEALTHY},
		[]*ferryv1.NodePlan(nil),
		map[string]*ferryv1.NodeEvent{"x": {Id: "n2", Connected: true}},
	} {
		if err := a.emit(v); err != nil {
			t.Fatal(err)
		}
	}
	want := "id: n1\nstate: healthy\n---\n[]\n---\nx:\n  id: n2\n  connected: true\n"
	if out.String() != want {
		t.Errorf("got\n%s\nwant\n%s", out.String(), want)
	}
}
