package enumword

import (
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

func TestOf(t *testing.T) {
	for _, tc := range []struct {
		in           protoreflect.Enum
		word, spaced string
	}{
		{ferryv1.RolloutState_ROLLOUT_STATE_SUCCEEDED, "succeeded", "succeeded"},
		{ferryv1.RolloutState_ROLLOUT_STATE_ROLLED_BACK, "rolled_back", "rolled back"},
		{ferryv1.RolloutState_ROLLOUT_STATE_UNSPECIFIED, "unspecified", "unspecified"},
		{ferryv1.NodeOutcome_NODE_OUTCOME_FAILED, "failed", "failed"},
		{ferryv1.NodeState_NODE_STATE_HEALTHY, "healthy", "healthy"},
		{ferryv1.FailureAction_FAILURE_ACTION_ROLLBACK, "rollback", "rollback"},
		{ferryv1.JobPhase_JOB_PHASE_UNCHANGED, "unchanged", "unchanged"},
		{ferryv1.JobKind_JOB_KIND_ROLLBACK, "rollback", "rollback"},
		{ferryv1.RolloutState(99), "99", "99"},
	} {
		t.Run(tc.word, func(t *testing.T) {
			if got := Of(tc.in); got != tc.word {
				t.Errorf("Of(%v) = %q, want %q", tc.in, got, tc.word)
			}
			if got := Spaced(tc.in); got != tc.spaced {
				t.Errorf("Spaced(%v) = %q, want %q", tc.in, got, tc.spaced)
			}
		})
	}
}

func TestUpperSnake(t *testing.T) {
	for in, want := range map[string]string{
		"RolloutState": "ROLLOUT_STATE",
		"JobKind":      "JOB_KIND",
		"Phase":        "PHASE",
		"Http2Frame":   "HTTP2_FRAME",
	} {
		if got := upperSnake(in); got != want {
			t.Errorf("upperSnake(%q) = %q, want %q", in, got, want)
		}
	}
}
