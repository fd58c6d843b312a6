package fleettest

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/ferrydeploy/ferry/controller/controller"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// The controller's /metrics is promlint clean and exports every metric the
// alert rules and the dashboard rely on (deployments/prometheus/README.md).
func TestMetricsArePromlintClean(t *testing.T) {
	f := newFleet(t, func(c *controller.Config) { c.GossipAddr, c.GossipProfile = "127.0.0.1:0", "local" })
	a := f.enroll("m1", f.token("staging", 1))
	f.start(a)
	f.waitState("m1", healthy, 5*time.Second)
	f.apply(motdPackage("1.0", `echo "$MOTD_VERSION"`))
	f.rollout(&ferryv1.CreateRolloutRequest{PackageName: "motd", PackageVersion: "1.0", Target: &ferryv1.Target{Group: "staging"}, Strategy: fast()})

	resp, err := http.Get("http://" + f.ctl.HTTPAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	text := string(body)
	problems, err := promlint.New(strings.NewReader(text)).Lint()
	if err != nil {
		t.Fatalf("promlint: %v", err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "ferry_") {
			t.Errorf("promlint: %s: %s", p.Metric, p.Text)
		}
	}
	lines := "\n" + text // each metric name follows a newline
	for _, name := range []string{
		"ferry_nodes", "ferry_heartbeats_received_total", "ferry_heartbeat_age_seconds_bucket", "ferry_heartbeat_max_age_seconds",
		"ferry_rollouts", "ferry_rollout_nodes", "ferry_artifact_bytes_served_total", "ferry_artifacts_damaged", "ferry_install_duration_seconds_bucket",
		"ferry_gossip_health_score", "ferry_gossip_members", "ferry_build_info", "grpc_server_handled_total", "grpc_server_handling_seconds_bucket",
	} {
		if !strings.Contains(lines, "\n"+name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	if !strings.Contains(text, `ferry_nodes{group="staging",state="healthy"} 1`) {
		t.Errorf("/metrics does not count m1 as healthy in staging")
	}
}

// The agent serves its own /metrics when asked to (off by default).
func TestAgentMetrics(t *testing.T) {
	f := newFleet(t, nil)
	a := f.enroll("am1", f.token("staging", 1))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a.metricsAddr = lis.Addr().String()
	lis.Close()
	f.start(a)
	f.waitState("am1", healthy, 5*time.Second)
	time.Sleep(3 * f.hbEvery)
	resp, err := http.Get("http://" + a.metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"ferry_agent_connected 1", "ferry_agent_build_info{"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("agent /metrics lacks %q", want)
		}
	}
	if strings.Contains(string(body), "ferry_agent_heartbeats_sent_total 0\n") {
		t.Errorf("agent counted no heartbeats")
	}
}
