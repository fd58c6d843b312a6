package scale

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/ferrydeploy/ferry/agent/integration/e2e"
	"github.com/ferrydeploy/ferry/agent/internal/facts"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// leadingLine is what a controller logs when it becomes the leader
// (controller/internal/cluster).
const leadingLine = `"msg":"leading the controllers"`

// BenchmarkFleetEtcdThreeControllers runs three controller processes on
// one etcd (the benchmark's, see startEtcd) and prefix, c1 first and c2
// and c3 joining with its secrets (--join, as the README says), gossip
// off, heartbeats every 5 s (the first of FERRY_SCALE_ETCD_HEARTBEATS).
// N simulated agents (FERRY_SCALE_ETCD_AGENTS, default 5,000) enroll
// through c1 and take all three addresses, agent i starting on
// controller i mod 3. It reports, in steady state over
// FERRY_SCALE_WINDOW: etcd write transactions per second (its revision's
// growth) and each controller's CPU (cores) and RSS. Then it kills the
// leader with SIGKILL and reports the failover time (the kill until
// another controller logs that it leads), the time until every agent that
// was on the killed controller has a stream again (its next welcome, on
// another controller), and the time until ListNodes on the new leader
// shows all N nodes connected. b.N is ignored: one run is one
// measurement.
func BenchmarkFleetEtcdThreeControllers(b *testing.B) {
	sizes, intervals, window := etcdKnobs(b)
	for _, n := range sizes {
		b.Run(fmt.Sprintf("agents=%d/controllers=3", n), func(b *testing.B) { runEtcdCluster(b, n, intervals[0], window) })
	}
}

func runEtcdCluster(b *testing.B, n int, hb, window time.Duration) {
	h := e2e.New(b)
	raiseNoFile(b, uint64(n)+1024)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	etcd := startEtcdIn(b, h)

	var ctls []*e2e.Controller
	// Registered after etcd's cleanup, so it runs first: the controllers
	// stop while etcd still answers.
	b.Cleanup(func() {
		for _, c := range ctls {
			if c.Running() {
				_ = syscall.Kill(-c.PID(), syscall.SIGTERM)
				c.Wait(e2e.StopTimeout)
			}
		}
	})
	for i, id := range []string{"c1", "c2", "c3"} {
		opts := e2e.ControllerOptions{
			Name:              id,
			NoGossip:          true,
			HeartbeatInterval: hb,
			StartTimeout:      60 * time.Second,
			Prefix:            nicePrefix(),
			Args:              []string{"--store", "etcd", "--etcd-endpoints", etcd.Endpoint, "--controller-id", id},
		}
		if i > 0 {
			opts.JoinFrom = ctls[0]
		}
		ctls = append(ctls, h.StartController(opts))
		if i == 0 {
			ctls[0].WaitLog(leadingLine, 30*time.Second)
		}
	}
	if dir := os.Getenv(envLogs); dir != "" {
		defer func() {
			for _, c := range ctls {
				path := filepath.Join(dir, fmt.Sprintf("controller-etcd3-%d-%s.log", n, c.Name()))
				if err := os.WriteFile(path, []byte(c.FullLog()), 0o644); err != nil {
					b.Errorf("keep the controller log: %v", err)
				}
			}
		}()
	}
	h.Use(ctls[0])
	time.Sleep(time.Second)
	pids := make([]int, len(ctls))
	addrs := make([]string, len(ctls))
	for i, c := range ctls {
		pids[i], addrs[i] = c.PID(), c.Advertise
	}

	ids, enrolled, enrollTime := enrollSim(ctx, b, h, ctls[0], n)
	fleet, err := NewFleet(AgentConfig{Controllers: addrs, CA: enrolled.CA, Facts: facts.Detect()}, ids, enrolled.Certs)
	if err != nil {
		b.Fatal(err)
	}
	began := time.Now()
	fleet.Start(ctx, hb)
	defer fleet.Stop()
	last, err := fleet.WaitConnected(ctx, time.Time{}, 3*time.Minute)
	if err != nil {
		b.Fatal(err)
	}
	connectTime := last.Sub(began)
	time.Sleep(warmup)
	b.Logf("3 controllers on %s, prefix %s, gossip off, heartbeat %v; fleet of %d simulated agents, agent i starting on controller i mod 3; enroll through c1 %v (%.0f/s); first connect of all %v; agents per controller %v",
		etcd.What, etcdPrefix, hb, n, enrollTime.Round(time.Millisecond), float64(n)/enrollTime.Seconds(), connectTime.Round(time.Millisecond), onEach(fleet, addrs))

	// Steady state.
	m0 := make([]map[string]float64, len(ctls))
	for i, c := range ctls {
		m0[i] = scrape(b, c)
	}
	e0 := etcd.counters(b)
	stopWatch := etcd.watchPuts(ctx, etcdPrefix+"/")
	st := measureAll(b, pids, window)
	puts := stopWatch()
	e1 := etcd.counters(b)
	w := rates(e0, e1)
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(w.revPerS, "etcd_writes/s")
	b.Logf("steady %v at heartbeat %v: etcd %.2f write txns/s (revision %+.0f), %.2f keys put/s, %.2f deletes/s, %.0f B/s received; whole machine %.2f cores busy; keys put by kind: %s",
		st[0].wall.Round(time.Millisecond), hb, w.revPerS, w.revs, w.putPerS, w.dels/w.wall.Seconds(), w.bs, st[0].machine, topCounts(puts, 6))
	for i, c := range ctls {
		m1 := scrape(b, c)
		beats := (m1["ferry_heartbeats_received_total"] - m0[i]["ferry_heartbeats_received_total"]) / st[i].wall.Seconds()
		cores := st[i].cpu.Seconds() / st[i].wall.Seconds()
		b.ReportMetric(cores, "cores_"+c.Name())
		b.ReportMetric(mib(st[i].rss.RSS), "rss_MiB_"+c.Name())
		b.Logf("steady: %s: heartbeats %.0f/s, %.3f cores, RSS %.1f MiB, %.0f goroutines", c.Name(), beats, cores, mib(st[i].rss.RSS), m1["go_goroutines"])
	}

	// Kill the leader.
	leader := -1
	for i, c := range ctls {
		if strings.Contains(c.Log(), leadingLine) {
			leader = i
		}
	}
	if leader < 0 {
		b.Fatalf("no controller logged %s", leadingLine)
	}
	dead := ctls[leader]
	var moving []*Agent
	for _, a := range fleet.Agents {
		if a.Controller() == dead.Advertise {
			moving = append(moving, a)
		}
	}
	e0 = etcd.counters(b)
	dead.Kill()
	killed := time.Now()
	var next *e2e.Controller
	h.WaitFor("another controller to lead", time.Minute, func() (bool, string) {
		for _, c := range ctls {
			if c != dead && strings.Contains(c.Log(), leadingLine) {
				next = c
				return true, ""
			}
		}
		return false, "no leader yet"
	})
	failover := time.Since(killed)
	b.ReportMetric(failover.Seconds(), "failover_s")

	// The killed controller's agents have a stream again.
	back, missing := time.Time{}, len(moving)
	for deadline := time.Now().Add(3 * time.Minute); missing > 0 && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
		missing = 0
		for _, a := range moving {
			if w := a.LastWelcome(); !w.After(killed) {
				missing++
			} else if w.After(back) {
				back = w
			}
		}
	}
	if missing > 0 {
		b.Fatalf("%d of the %d agents that were on %s have no stream 3m after its kill", missing, len(moving), dead.Name())
	}
	reconnect := back.Sub(killed)
	b.ReportMetric(reconnect.Seconds(), "reconnect_s")

	// And the new leader's merged view shows every node connected.
	admin, err := DialAdmin(next.AdminConfig, next.Advertise)
	if err != nil {
		b.Fatal(err)
	}
	defer admin.Close()
	nodes := ferryv1.NewNodeServiceClient(admin)
	var listed time.Duration
	connected := 0
	for deadline := time.Now().Add(3 * time.Minute); ; {
		all, err := ListNodes(ctx, nodes, grpc.MaxCallRecvMsgSize(64<<20))
		if err != nil {
			b.Fatalf("list nodes on %s: %v", next.Name(), err)
		}
		connected = 0
		for _, nd := range all {
			if nd.GetConnected() {
				connected++
			}
		}
		if connected == n {
			listed = time.Since(killed)
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("ListNodes on %s shows %d of %d nodes connected 3m after the kill of %s", next.Name(), connected, n, dead.Name())
		}
		time.Sleep(time.Second)
	}
	wf := rates(e0, etcd.counters(b))
	b.ReportMetric(listed.Seconds(), "all_connected_s")
	b.Logf("SIGKILL of the leader %s: %s led %v later (failover); all %d of its agents had a stream again %v after the kill; ListNodes on %s showed all %d nodes connected %v after the kill (polled every 1s); etcd %.0f write txns from the kill to then; agents per controller now %v",
		dead.Name(), next.Name(), failover.Round(10*time.Millisecond), len(moving), reconnect.Round(10*time.Millisecond),
		next.Name(), n, listed.Round(10*time.Millisecond), wf.revs, onEach(fleet, addrs))
}

// onEach counts the agents whose latest attempt went to each address.
func onEach(f *Fleet, addrs []string) []int {
	out := make([]int, len(addrs))
	for _, a := range f.Agents {
		for i, ad := range addrs {
			if a.Controller() == ad {
				out[i]++
			}
		}
	}
	return out
}
