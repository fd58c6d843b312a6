// Strategy: the defaults for unset fields, validating a strategy, and the
// limit arithmetic of max-parallel and max-failures.

package rollout

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// Defaults for strategy fields left unset. They are what a cautious operator
// would choose: one canary that must be promoted by hand, one node at a
// time, no failure tolerated (the first failure pauses the rollout), ten
// minutes per node, and ten seconds of heartbeats after the checks pass.
const (
	DefaultCanary           = 1
	DefaultMaxParallel      = "1"
	DefaultMaxFailures      = "0"
	DefaultOnFailure        = ferryv1.FailureAction_FAILURE_ACTION_PAUSE
	DefaultProgressDeadline = 10 * time.Minute
	DefaultHealthyFor       = 10 * time.Second
)

// limit is a count ("2") or a percent of the targeted nodes ("25%").
type limit struct {
	n       int
	percent bool
}

func (l limit) String() string {
	if l.percent {
		return strconv.Itoa(l.n) + "%"
	}
	return strconv.Itoa(l.n)
}

// parseLimit reads "N" or "P%" (P at most 100). least is the smallest
// value allowed (1 for max-parallel, 0 for max-failures).
func parseLimit(flag, s string, least int) (limit, error) {
	s = strings.TrimSpace(s)
	l := limit{}
	num := s
	if strings.HasSuffix(s, "%") {
		l.percent = true
		num = strings.TrimSpace(strings.TrimSuffix(s, "%"))
	}
	n, err := strconv.Atoi(num)
	if err != nil || n < least || (l.percent && n > 100) {
		want := fmt.Sprintf("a count like %d or a percent like 25%%", max(least, 2))
		if least > 0 {
			want += fmt.Sprintf(" (at least %d)", least)
		}
		return limit{}, fmt.Errorf("%w: %s %q: want %s", ErrInvalid, flag, s, want)
	}
	l.n = n
	return l, nil
}

// parallel is the window size for total targeted nodes: a percent is
// rounded down, but the window is never smaller than one node.
func (l limit) parallel(total int) int {
	n := l.n
	if l.percent {
		n = l.n * total / 100
	}
	return max(n, 1)
}

// exceeded reports whether failures exceed the limit over total nodes. A
// percent is compared exactly: 3 failures of 10 exceed 25% (2.5), 2 do not.
func (l limit) exceeded(failures, total int) bool {
	if l.percent {
		return failures*100 > l.n*total
	}
	return failures > l.n
}

// strategy is a validated strategy in the engine's terms (the canary count
// is only read when the nodes are split into waves, from the record).
type strategy struct {
	autoPromote      bool
	maxParallel      limit
	maxFailures      limit
	onFailure        ferryv1.FailureAction
	progressDeadline time.Duration
	healthyFor       time.Duration
}

// withDefaults returns a copy of s with unset fields set to the defaults,
// validated. The filled copy is what a rollout records, so its history shows
// the values that applied.
func withDefaults(s *ferryv1.Strategy) (*ferryv1.Strategy, error) {
	out := &ferryv1.Strategy{}
	if s != nil {
		out = proto.Clone(s).(*ferryv1.Strategy)
	}
	if out.Canary == nil {
		out.Canary = proto.Uint32(DefaultCanary)
	}
	if strings.TrimSpace(out.MaxParallel) == "" {
		out.MaxParallel = DefaultMaxParallel
	}
	if strings.TrimSpace(out.MaxFailures) == "" {
		out.MaxFailures = DefaultMaxFailures
	}
	if out.OnFailure == ferryv1.FailureAction_FAILURE_ACTION_UNSPECIFIED {
		out.OnFailure = DefaultOnFailure
	}
	if out.ProgressDeadline == nil || out.ProgressDeadline.AsDuration() == 0 {
		out.ProgressDeadline = durationpb.New(DefaultProgressDeadline)
	}
	if out.HealthyFor == nil {
		out.HealthyFor = durationpb.New(DefaultHealthyFor)
	}
	_, err := parseStrategy(out)
	return out, err
}

// parseStrategy validates a filled strategy.
func parseStrategy(s *ferryv1.Strategy) (strategy, error) {
	var errs []error
	st := strategy{
		autoPromote:      s.GetAutoPromote(),
		onFailure:        s.GetOnFailure(),
		progressDeadline: s.GetProgressDeadline().AsDuration(),
		healthyFor:       s.GetHealthyFor().AsDuration(),
	}
	var err error
	if st.maxParallel, err = parseLimit("max-parallel", s.GetMaxParallel(), 1); err != nil {
		errs = append(errs, err)
	}
	if st.maxFailures, err = parseLimit("max-failures", s.GetMaxFailures(), 0); err != nil {
		errs = append(errs, err)
	}
	if _, ok := ferryv1.FailureAction_name[int32(st.onFailure)]; !ok || st.onFailure == ferryv1.FailureAction_FAILURE_ACTION_UNSPECIFIED {
		errs = append(errs, fmt.Errorf("%w: on-failure %d: want pause, abort or rollback", ErrInvalid, st.onFailure))
	}
	if st.progressDeadline <= 0 || !s.GetProgressDeadline().IsValid() {
		errs = append(errs, fmt.Errorf("%w: progress-deadline %s: must be positive", ErrInvalid, st.progressDeadline))
	}
	if st.healthyFor < 0 || !s.GetHealthyFor().IsValid() {
		errs = append(errs, fmt.Errorf("%w: healthy-for %s: must not be negative", ErrInvalid, st.healthyFor))
	} else if st.progressDeadline > 0 && st.healthyFor >= st.progressDeadline {
		errs = append(errs, fmt.Errorf("%w: healthy-for %s must be shorter than progress-deadline %s", ErrInvalid, st.healthyFor, st.progressDeadline))
	}
	return st, errors.Join(errs...)
}
