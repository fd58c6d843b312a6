package metrics

import (
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// ferry_node_unhealthy names each node that is not well, and only those:
// a healthy fleet exports no per-node series.
func TestNodeUnhealthy(t *testing.T) {
	nodes := []*ferryv1.Node{
		{Id: "web-01", Group: "production", State: ferryv1.NodeState_NODE_STATE_HEALTHY},
		{Id: "web-02", Group: "production", State: ferryv1.NodeState_NODE_STATE_DOWN},
		{Id: "db-01", Group: "production", State: ferryv1.NodeState_NODE_STATE_UNREACHABLE},
		{Id: "new", Group: "staging", State: ferryv1.NodeState_NODE_STATE_PENDING},
		{Id: "gone", Group: "staging", State: ferryv1.NodeState_NODE_STATE_REMOVED},
	}
	reg := prometheus.NewRegistry()
	New(reg, func() []*ferryv1.Node { return nodes }, time.Now)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, mf := range mfs {
		if mf.GetName() != "ferry_node_unhealthy" {
			continue
		}
		for _, m := range mf.GetMetric() {
			l := map[string]string{}
			for _, lp := range m.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			got = append(got, l["node"]+"/"+l["group"]+"/"+l["state"])
		}
	}
	slices.Sort(got)
	if want := []string{"db-01/production/unreachable", "web-02/production/down"}; !slices.Equal(got, want) {
		t.Errorf("ferry_node_unhealthy series %v, want %v", got, want)
	}
}
