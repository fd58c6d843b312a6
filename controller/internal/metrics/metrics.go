// Package metrics defines the controller's Prometheus metrics. Heartbeat
// age is a histogram observed on each heartbeat plus a max-age gauge
// computed at scrape time, not a per-node gauge: at 5,000 nodes a per-node
// series would multiply the scrape size and the TSDB's series count by the
// fleet size, while the histogram costs a fixed number of buckets.
package metrics

import (
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrydeploy/ferry/controller/internal/nodestate"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/version"
)

// Metrics are the controller's own collectors.
type Metrics struct {
	HeartbeatsReceived  prometheus.Counter
	HeartbeatAge        prometheus.Histogram
	ArtifactBytesServed prometheus.Counter
	// PeerBadPieces counts reports of agents that served a corrupt piece
	// to a peer (peer exchange).
	PeerBadPieces   prometheus.Counter
	InstallDuration *prometheus.HistogramVec
}

// New registers the metrics on reg.
func New(reg prometheus.Registerer, nodes func() []*ferryv1.Node, now func() time.Time) *Metrics {
	m := &Metrics{
		HeartbeatsReceived: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ferry_heartbeats_received_total", Help: "Heartbeats received from agents.",
		}),
		HeartbeatAge: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ferry_heartbeat_age_seconds",
			Help:    "Age of a node's previous heartbeat when a new one arrives.",
			Buckets: []float64{1, 2.5, 5, 7.5, 10, 15, 30, 60, 120},
		}),
		ArtifactBytesServed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ferry_artifact_bytes_served_total", Help: "Artifact bytes streamed to agents.",
		}),
		PeerBadPieces: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ferry_peer_bad_pieces_total", Help: "Reports of agents that served a piece of an artifact whose bytes did not match its digest to a peer.",
		}),
		InstallDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "ferry_install_duration_seconds",
			Help:    "Duration of install jobs, from dispatch to final report, by outcome.",
			Buckets: prometheus.ExponentialBuckets(0.5, 2, 12),
		}, []string{"outcome"}),
	}
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "ferry_build_info", Help: "Build information of the controller; the value is always 1.",
	}, []string{"version", "commit", "goversion"})
	build.WithLabelValues(version.Version, version.Commit, runtime.Version()).Set(1)
	reg.MustRegister(m.HeartbeatsReceived, m.HeartbeatAge, m.ArtifactBytesServed, m.PeerBadPieces, m.InstallDuration, build,
		&nodeCollector{nodes: nodes, now: now})
	return m
}

// HeartbeatReceived implements the server's Observer.
func (m *Metrics) HeartbeatReceived(age time.Duration) {
	m.HeartbeatsReceived.Inc()
	if age > 0 && age < time.Hour {
		m.HeartbeatAge.Observe(age.Seconds())
	}
}

var (
	nodesDesc = prometheus.NewDesc("ferry_nodes", "Enrolled nodes by health state and group.", []string{"state", "group"}, nil)
	maxAge    = prometheus.NewDesc("ferry_heartbeat_max_age_seconds", "Age of the oldest heartbeat among connected-or-stale nodes that are not removed or left.", nil, nil)
	// unhealthyDesc names the node, so an alert can; it has a series only
	// for a node that is stale, unreachable, suspect or down, so a healthy
	// fleet exports none and the count follows the incident, not the fleet.
	unhealthyDesc = prometheus.NewDesc("ferry_node_unhealthy", "1 for each enrolled node that is stale, unreachable, suspect or down, with its state; healthy, pending, left and removed nodes have no series.", []string{"node", "group", "state"}, nil)
)

type nodeCollector struct {
	nodes func() []*ferryv1.Node
	now   func() time.Time
}

func (c *nodeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- nodesDesc
	ch <- maxAge
	ch <- unhealthyDesc
}

func (c *nodeCollector) Collect(ch chan<- prometheus.Metric) {
	type key struct{ state, group string }
	counts := map[key]int{}
	now := c.now()
	var oldest time.Duration
	for _, n := range c.nodes() {
		counts[key{nodestate.Name(n.State), n.Group}]++
		switch n.State {
		case ferryv1.NodeState_NODE_STATE_STALE, ferryv1.NodeState_NODE_STATE_UNREACHABLE, ferryv1.NodeState_NODE_STATE_SUSPECT, ferryv1.NodeState_NODE_STATE_DOWN:
			ch <- prometheus.MustNewConstMetric(unhealthyDesc, prometheus.GaugeValue, 1, n.Id, n.Group, nodestate.Name(n.State))
		}
		switch n.State {
		case ferryv1.NodeState_NODE_STATE_REMOVED, ferryv1.NodeState_NODE_STATE_LEFT, ferryv1.NodeState_NODE_STATE_PENDING:
			continue
		}
		if n.LastHeartbeat != nil {
			if age := now.Sub(n.LastHeartbeat.AsTime()); age > oldest {
				oldest = age
			}
		}
	}
	for k, v := range counts {
		ch <- prometheus.MustNewConstMetric(nodesDesc, prometheus.GaugeValue, float64(v), k.state, k.group)
	}
	ch <- prometheus.MustNewConstMetric(maxAge, prometheus.GaugeValue, oldest.Seconds())
}
