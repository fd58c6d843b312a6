package controller

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrydeploy/ferry/controller/internal/rollout"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/enumword"
)

var (
	rolloutsDesc     = prometheus.NewDesc("ferry_rollouts", "Rollouts by state.", []string{"state"}, nil)
	rolloutNodesDesc = prometheus.NewDesc("ferry_rollout_nodes", "Per-node outcomes of the rollouts that have not ended.", []string{"state"}, nil)
	lastProgressDesc = prometheus.NewDesc("ferry_rollout_last_progress_timestamp_seconds", "When a running rollout last changed (Unix seconds); only for running or rolling-back rollouts.", []string{"rollout"}, nil)
)

// rolloutCollector reads the engine at scrape time.
type rolloutCollector struct{ engine *rollout.Engine }

func (c rolloutCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- rolloutsDesc
	ch <- rolloutNodesDesc
	ch <- lastProgressDesc
}

func (c rolloutCollector) Collect(ch chan<- prometheus.Metric) {
	counts := c.engine.Counts()
	for v := range ferryv1.RolloutState_name {
		if v == 0 {
			continue
		}
		ch <- prometheus.MustNewConstMetric(rolloutsDesc, prometheus.GaugeValue, float64(counts[ferryv1.RolloutState(v)]), enumword.Of(ferryv1.RolloutState(v)))
	}
	outcomes := map[ferryv1.NodeOutcome]int{}
	for _, p := range c.engine.Progress() {
		for o, n := range p.Outcomes {
			outcomes[o] += n
		}
		switch p.State {
		case ferryv1.RolloutState_ROLLOUT_STATE_RUNNING, ferryv1.RolloutState_ROLLOUT_STATE_ROLLING_BACK:
			if r, err := c.engine.Get(p.ID); err == nil && r.GetUpdatedAt() != nil {
				ch <- prometheus.MustNewConstMetric(lastProgressDesc, prometheus.GaugeValue, float64(r.GetUpdatedAt().AsTime().UnixNano())/1e9, p.ID)
			}
		}
	}
	for v := range ferryv1.NodeOutcome_name {
		if v == 0 {
			continue
		}
		ch <- prometheus.MustNewConstMetric(rolloutNodesDesc, prometheus.GaugeValue, float64(outcomes[ferryv1.NodeOutcome(v)]), enumword.Of(ferryv1.NodeOutcome(v)))
	}
}
