package metrics

import (
	"errors"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// ferry_artifacts_damaged follows the store's count, and keeps the last
// one when the store cannot be read, so an alert does not resolve then.
func TestArtifactsDamaged(t *testing.T) {
	reg := prometheus.NewRegistry()
	var n int
	var err error
	RegisterArtifacts(reg, func() (int, error) { return n, err })
	for _, step := range []struct {
		n    int
		err  error
		want float64
	}{
		{0, nil, 0},
		{2, nil, 2},
		{0, errors.New("store closed"), 2},
		{0, nil, 0},
	} {
		n, err = step.n, step.err
		mfs, gerr := reg.Gather()
		if gerr != nil || len(mfs) != 1 || mfs[0].GetName() != "ferry_artifacts_damaged" {
			t.Fatalf("gather = %v, %v", mfs, gerr)
		}
		if got := mfs[0].GetMetric()[0].GetGauge().GetValue(); got != step.want {
			t.Errorf("count %d, error %v: gauge %g, want %g", step.n, step.err, got, step.want)
		}
	}
}
