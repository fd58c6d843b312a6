package scale

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/ferrydeploy/ferry/agent/integration/e2e"
	"github.com/ferrydeploy/ferry/agent/internal/facts"
	"github.com/ferrydeploy/ferry/controller/etcdtest"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// Knobs of the etcd benchmark, from the environment (FERRY_SCALE_WINDOW
// and FERRY_SCALE_LOGS as for BenchmarkFleetScale).
const (
	envEtcdAgents = "FERRY_SCALE_ETCD_AGENTS" // fleet sizes (default 5000)
	// FERRY_SCALE_ETCD_HEARTBEATS: the heartbeat intervals the steady state
	// is measured at, in turn, on one fleet (default 5s,2s).
	envEtcdHeartbeats = "FERRY_SCALE_ETCD_HEARTBEATS"
	// FERRY_ETCD_BIN names the etcd binary (default /usr/bin/etcd, Debian's
	// etcd-server); "embedded" runs etcd in the benchmark's process instead.
	envEtcdBin = "FERRY_ETCD_BIN"
)

// etcdPrefix is the controller's default --etcd-prefix.
const etcdPrefix = "/ferry"

// etcdServer is the etcd the benchmark started: its own process (pid) or
// one embedded in this process (pid 0).
type etcdServer struct {
	Endpoint string
	What     string
	pid      int
	cli      *clientv3.Client
}

// startEtcd starts a single-member etcd with its data under dir: the
// binary FERRY_ETCD_BIN names or /usr/bin/etcd when it exists, else one
// embedded in this process (controller/etcdtest). Never an outside
// service. Both run with etcd's default limits (--max-request-bytes 1.5
// MiB, --max-txn-ops 128) and fsync on.
func startEtcd(b *testing.B, dir string) *etcdServer {
	b.Helper()
	bin := os.Getenv(envEtcdBin)
	if bin == "" {
		if _, err := os.Stat("/usr/bin/etcd"); err == nil {
			bin = "/usr/bin/etcd"
		} else {
			bin = "embedded"
		}
	}
	s := &etcdServer{}
	if bin == "embedded" {
		srv, err := etcdtest.StartServer(dir)
		if err != nil {
			b.Skipf("etcd: no etcd binary (install etcd-server, or name one with %s) and the embedded one did not start: %v", envEtcdBin, err)
		}
		b.Cleanup(srv.Close)
		s.Endpoint, s.What = srv.Endpoints[0], "embedded etcd (go.etcd.io/etcd/server/v3/embed, in the benchmark's process, no fsync)"
	} else {
		ports := freePorts(b, 2)
		cu, pu := fmt.Sprintf("http://127.0.0.1:%d", ports[0]), fmt.Sprintf("http://127.0.0.1:%d", ports[1])
		cmd := exec.Command(bin, "--name", "bench", "--data-dir", filepath.Join(dir, "data"),
			"--listen-client-urls", cu, "--advertise-client-urls", cu,
			"--listen-peer-urls", pu, "--initial-advertise-peer-urls", pu,
			"--initial-cluster", "bench="+pu, "--log-level", "warn")
		logf, err := os.Create(filepath.Join(dir, "etcd.log"))
		if err != nil {
			b.Fatal(err)
		}
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			b.Skipf("etcd: cannot run %s: %v; install etcd-server or set %s=embedded", bin, err, envEtcdBin)
		}
		b.Cleanup(func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			_ = cmd.Wait()
			_ = logf.Close()
		})
		out, _ := exec.Command(bin, "--version").Output()
		ver, _, _ := strings.Cut(string(out), "\n")
		s.Endpoint, s.What, s.pid = cu, fmt.Sprintf("%s (%s, its own process, fsync on)", bin, strings.TrimSpace(ver)), cmd.Process.Pid
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{s.Endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = cli.Close() })
	s.cli = cli
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := cli.Get(ctx, "/")
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			b.Skipf("etcd %s not serving after 30s: %v (its log: %s); set %s=embedded to run one in process", s.Endpoint, err, filepath.Join(dir, "etcd.log"), envEtcdBin)
		}
		time.Sleep(200 * time.Millisecond)
	}
	return s
}

func freePorts(b *testing.B, n int) []int {
	b.Helper()
	var ports []int
	var held []net.Listener // kept open until all are picked, so none repeats
	defer func() {
		for _, l := range held {
			_ = l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		held = append(held, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

// etcdCounters is what etcd says about the writes it took: its revision
// (one per write transaction that changed something: a Txn with any
// number of puts and deletes counts once) and its own metrics.
type etcdCounters struct {
	at       time.Time
	revision int64
	puts     float64 // etcd_mvcc_put_total: keys put
	deletes  float64 // etcd_mvcc_delete_total
	txns     float64 // etcd_mvcc_txn_total: transactions, read-only ones too
	recvd    float64 // etcd_network_client_grpc_received_bytes_total: bytes clients sent
	dbSize   float64 // etcd_mvcc_db_total_size_in_bytes
}

func (s *etcdServer) counters(b *testing.B) etcdCounters {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := s.cli.Get(ctx, etcdPrefix+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		b.Fatalf("etcd revision: %v", err)
	}
	c := etcdCounters{at: time.Now(), revision: resp.Header.Revision}
	hr, err := http.Get(s.Endpoint + "/metrics")
	if err != nil {
		b.Fatalf("etcd metrics: %v", err)
	}
	defer hr.Body.Close()
	body, err := io.ReadAll(hr.Body)
	if err != nil {
		b.Fatalf("etcd metrics: %v", err)
	}
	m := parseMetrics(string(body))
	c.puts, c.deletes, c.txns = m["etcd_mvcc_put_total"], m["etcd_mvcc_delete_total"], m["etcd_mvcc_txn_total"]
	c.recvd = m["etcd_network_client_grpc_received_bytes_total"]
	c.dbSize = m["etcd_mvcc_db_total_size_in_bytes"]
	if c.dbSize == 0 {
		c.dbSize = m["etcd_debugging_mvcc_db_total_size_in_bytes"]
	}
	return c
}

// etcdRates are the writes between two readings.
type etcdRates struct {
	wall                 time.Duration
	revs, puts, dels     float64 // counts
	recvd                float64 // bytes
	revPerS, putPerS, bs float64 // per second
}

func rates(a, b etcdCounters) etcdRates {
	r := etcdRates{wall: b.at.Sub(a.at), revs: float64(b.revision - a.revision), puts: b.puts - a.puts, dels: b.deletes - a.deletes, recvd: b.recvd - a.recvd}
	s := r.wall.Seconds()
	r.revPerS, r.putPerS, r.bs = r.revs/s, r.puts/s, r.recvd/s
	return r
}

// watchPuts counts the keys put under prefix from now until the returned
// function is called, by kind: the key without its last segment
// ("/ferry/nodes/*"), so a steady state that writes shows what it writes.
func (s *etcdServer) watchPuts(ctx context.Context, prefix string) func() map[string]int {
	ctx, cancel := context.WithCancel(ctx)
	counts := map[string]int{}
	done := make(chan struct{})
	wch := s.cli.Watch(ctx, prefix, clientv3.WithPrefix())
	go func() {
		defer close(done)
		for resp := range wch {
			for _, ev := range resp.Events {
				if ev.Type != clientv3.EventTypePut {
					continue
				}
				k := string(ev.Kv.Key)
				if i := strings.LastIndexByte(k, '/'); i > len(prefix) {
					k = k[:i] + "/*"
				}
				counts[k]++
			}
		}
	}()
	return func() map[string]int {
		cancel()
		<-done
		return counts
	}
}

// topCounts formats the largest counts of m, "key n, ...".
func topCounts(m map[string]int, most int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int { return cmp.Or(m[b]-m[a], strings.Compare(a, b)) })
	var parts []string
	for i, k := range keys {
		if i == most {
			parts = append(parts, fmt.Sprintf("%d kinds more", len(keys)-most))
			break
		}
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// keyBytes sums the keys and values stored under prefix (current
// revision): how large the records there are.
func (s *etcdServer) keyBytes(b *testing.B, prefix string) (keys int, bytes int, largest int) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := s.cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		b.Fatalf("etcd get %s: %v", prefix, err)
	}
	for _, kv := range resp.Kvs {
		keys++
		n := len(kv.Key) + len(kv.Value)
		bytes += n
		largest = max(largest, n)
	}
	return keys, bytes, largest
}

// BenchmarkFleetEtcd runs a controller on the etcd store (an etcd the
// benchmark starts, see startEtcd) with N simulated agents (default
// 5,000) and reports, in steady state at each heartbeat interval of
// FERRY_SCALE_ETCD_HEARTBEATS: etcd write transactions per second (its
// revision's growth), keys put per second and bytes received (etcd's own
// metrics), controller CPU and RSS. Then a rollout to every node
// (--max-parallel 100%, the simulated agents answer each job with
// accepted, installing and succeeded): its wall time, etcd's writes and
// bytes during it, bytes per job update, the rollout's stored size, the
// controller's CPU and peak RSS. b.N is ignored: one run is one
// measurement. Without an etcd binary and with the embedded one failing it
// skips with the reason.
//
// Several controllers on one etcd: BenchmarkFleetEtcdThreeControllers.
func BenchmarkFleetEtcd(b *testing.B) {
	sizes, intervals, window := etcdKnobs(b)
	for _, n := range sizes {
		b.Run(fmt.Sprintf("agents=%d/controllers=1", n), func(b *testing.B) { runEtcdScale(b, n, intervals, window) })
	}
}

// etcdKnobs reads the etcd benchmarks' fleet sizes, heartbeat intervals
// and steady-state window from the environment.
func etcdKnobs(b *testing.B) (sizes []int, intervals []time.Duration, window time.Duration) {
	b.Helper()
	sizes = []int{5000}
	if s := os.Getenv(envEtcdAgents); s != "" {
		sizes = nil
		for _, f := range strings.Split(s, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n <= 0 {
				b.Fatalf("%s=%q: want comma-separated positive fleet sizes, e.g. 500,5000", envEtcdAgents, s)
			}
			sizes = append(sizes, n)
		}
	}
	intervals = []time.Duration{5 * time.Second, 2 * time.Second}
	if s := os.Getenv(envEtcdHeartbeats); s != "" {
		intervals = nil
		for _, f := range strings.Split(s, ",") {
			d, err := time.ParseDuration(strings.TrimSpace(f))
			if err != nil || d < 500*time.Millisecond {
				b.Fatalf("%s=%q: want comma-separated heartbeat intervals of at least 500ms, e.g. 5s,2s", envEtcdHeartbeats, s)
			}
			intervals = append(intervals, d)
		}
	}
	window = 30 * time.Second
	if s := os.Getenv(envWindow); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < time.Second {
			b.Fatalf("%s=%q: want a duration of at least 1s, e.g. 30s", envWindow, s)
		}
		window = d
	}
	return sizes, intervals, window
}

func runEtcdScale(b *testing.B, n int, intervals []time.Duration, window time.Duration) {
	h := e2e.New(b)
	raiseNoFile(b, uint64(n)+1024)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	etcd := startEtcdIn(b, h)

	// The heartbeat interval comes from a config file, so a reload
	// (SIGHUP) changes it for the connected fleet without a restart.
	conf := filepath.Join(h.Dir(), "controller.yaml")
	writeInterval := func(d time.Duration) {
		if err := os.WriteFile(conf, []byte("heartbeat-interval: "+d.String()+"\n"), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	writeInterval(intervals[0])
	c := h.StartController(e2e.ControllerOptions{
		ConfigFile:   conf,
		NoGossip:     true,
		StartTimeout: 60 * time.Second,
		Prefix:       nicePrefix(),
		Args:         []string{"--store", "etcd", "--etcd-endpoints", etcd.Endpoint},
	})
	if dir := os.Getenv(envLogs); dir != "" {
		defer func() {
			path := filepath.Join(dir, fmt.Sprintf("controller-etcd-%d.log", n))
			if err := os.WriteFile(path, []byte(c.FullLog()), 0o644); err != nil {
				b.Errorf("keep the controller log: %v", err)
			}
		}()
	}
	time.Sleep(time.Second)
	idle := procMemory(b, c.PID())

	e0 := etcd.counters(b)
	ids, enrolled, enrollTime := enrollSim(ctx, b, h, c, n)
	enrollW := rates(e0, etcd.counters(b))

	admin, err := DialAdmin(c.AdminConfig, c.Advertise)
	if err != nil {
		b.Fatal(err)
	}
	defer admin.Close()

	fleet, err := NewFleet(AgentConfig{Controllers: []string{c.Advertise}, CA: enrolled.CA, Facts: facts.Detect()}, ids, enrolled.Certs)
	if err != nil {
		b.Fatal(err)
	}
	began := time.Now()
	e0 = etcd.counters(b)
	fleet.Start(ctx, intervals[0])
	defer fleet.Stop()
	last, err := fleet.WaitConnected(ctx, time.Time{}, 3*time.Minute)
	if err != nil {
		b.Fatal(err)
	}
	connectTime := last.Sub(began)
	connectW := rates(e0, etcd.counters(b))
	time.Sleep(warmup)

	b.Logf("controller on %s, prefix %s; fleet of %d simulated agents, gossip off; enroll %v (%.0f/s; etcd %.0f write txns, %.1f per node, %.0f keys put, %.1f KiB received per node); first connect of all %v (etcd %.0f write txns: %.2f per node)",
		etcd.What, etcdPrefix, n, enrollTime.Round(time.Millisecond), float64(n)/enrollTime.Seconds(),
		enrollW.revs, enrollW.revs/float64(n), enrollW.puts, enrollW.recvd/float64(n)/1024,
		connectTime.Round(time.Millisecond), connectW.revs, connectW.revs/float64(n))

	var steadyCores, steadyRSS float64
	for i, iv := range intervals {
		if i > 0 {
			writeInterval(iv)
			c.Signal(syscall.SIGHUP)
			c.WaitLog("config reloaded", 10*time.Second)
			// Every agent takes the new interval at its next beat.
			time.Sleep(intervals[i-1] + warmup)
		}
		m0, e0 := scrape(b, c), etcd.counters(b)
		st := measure(b, c.PID(), window)
		m1, e1 := scrape(b, c), etcd.counters(b)
		w := rates(e0, e1)
		hb := (m1["ferry_heartbeats_received_total"] - m0["ferry_heartbeats_received_total"]) / st.wall.Seconds()
		cores := st.cpu.Seconds() / st.wall.Seconds()
		if i == 0 {
			steadyCores, steadyRSS = cores, mib(st.rss.RSS)
		}
		b.ReportMetric(w.revPerS, fmt.Sprintf("etcd_writes/s@hb=%v", iv))
		b.ReportMetric(cores, fmt.Sprintf("cores@hb=%v", iv))
		b.Logf("steady %v at heartbeat %v: heartbeats %.0f/s; etcd %.2f write txns/s (revision %+.0f), %.2f keys put/s, %.2f deletes/s, %.0f B/s received; controller %.3f cores, RSS %.1f MiB (idle %.1f MiB), %.0f goroutines; whole machine %.2f cores busy",
			st.wall.Round(time.Millisecond), iv, hb, w.revPerS, w.revs, w.putPerS, w.dels/w.wall.Seconds(), w.bs, cores, mib(st.rss.RSS), mib(idle.RSS), m1["go_goroutines"], st.machine)
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(steadyCores, "cores")
	b.ReportMetric(steadyRSS, "rss_MiB")

	rolloutOnEtcd(b, ctx, h, c, etcd, fleet, admin)
}

// startEtcdIn starts the benchmark's etcd (startEtcd) in the harness's
// directory.
func startEtcdIn(b *testing.B, h *e2e.Harness) *etcdServer {
	b.Helper()
	dir := filepath.Join(h.Dir(), "etcd")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	return startEtcd(b, dir)
}

// enrollSim enrolls n simulated nodes sim-00000... in group scale through
// controller c, enrollParallel at a time, and says how long it took.
func enrollSim(ctx context.Context, b *testing.B, h *e2e.Harness, c *e2e.Controller, n int) ([]string, *Enrolled, time.Duration) {
	b.Helper()
	tok := h.CreateToken(e2e.TokenOptions{Group: "scale", Uses: n, TTL: time.Hour})
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("sim-%05d", i)
	}
	began := time.Now()
	enrolled, err := Enroll(ctx, Enrollment{Controller: c.Advertise, Token: tok.Secret, CAPin: tok.CAPin, Dir: filepath.Join(h.Dir(), "nodes"), Parallel: enrollParallel}, ids)
	if err != nil {
		b.Fatal(err)
	}
	return ids, enrolled, time.Since(began)
}

// rolloutOnEtcd runs a rollout of a package with no artifact (a file step
// and a check) to every node of the fleet at once and reports what it
// cost etcd and the controller.
func rolloutOnEtcd(b *testing.B, ctx context.Context, h *e2e.Harness, c *e2e.Controller, etcd *etcdServer, fleet *Fleet, admin *grpc.ClientConn) {
	n := len(fleet.Agents)
	pkg := filepath.Join(h.Dir(), "sim.yaml")
	if err := os.WriteFile(pkg, []byte(`name: sim
version: 1.0.0
steps:
  - file: {path: /etc/sim.conf, content: "sim 1.0.0\n"}
  - check: {run: "true"}
`), 0o644); err != nil {
		b.Fatal(err)
	}
	h.MustCtl("package", "apply", "-f", pkg)
	jobs0, upd0 := fleet.JobTotals()
	e0 := etcd.counters(b)
	cpu0, began := procCPU(b, c.PID()), time.Now()
	id := strings.TrimSpace(h.MustCtl("rollout", "--group", "scale", "--package", "sim@1.0.0", "--canary", "0", "--max-parallel", "100%", "--healthy-for", "0s", "--detach"))
	rollouts := ferryv1.NewRolloutServiceClient(admin)
	var (
		r        *ferryv1.Rollout
		peakRSS  Memory
		lastDone = -1
		moved    = time.Now()
		stalled  bool
	)
	for {
		time.Sleep(2 * time.Second)
		if m := procMemory(b, c.PID()); m.RSS > peakRSS.RSS {
			peakRSS = m
		}
		resp, err := rollouts.GetRollout(ctx, &ferryv1.GetRolloutRequest{Id: id}, grpc.MaxCallRecvMsgSize(64<<20))
		if err != nil {
			b.Fatalf("get rollout %s: %v", id, err)
		}
		r = resp.GetRollout()
		done := 0
		for _, nj := range r.GetNodes() {
			if nj.GetFinishedAt() != nil {
				done++
			}
		}
		if done != lastDone {
			lastDone, moved = done, time.Now()
		}
		if st := r.GetState(); st != ferryv1.RolloutState_ROLLOUT_STATE_RUNNING && st != ferryv1.RolloutState_ROLLOUT_STATE_WAITING_PROMOTION {
			break
		}
		if time.Since(moved) > 2*time.Minute {
			stalled = true
			break
		}
	}
	wall := time.Since(began)
	cpu := procCPU(b, c.PID()) - cpu0
	e1 := etcd.counters(b)
	jobs1, upd1 := fleet.JobTotals()
	w := rates(e0, e1)
	updates := float64(upd1 - upd0)
	keys, size, largest := etcd.keyBytes(b, etcdPrefix+"/rollout")
	b.ReportMetric(wall.Seconds(), "rollout_s")
	b.ReportMetric(w.recvd/max(updates, 1), "etcd_B_per_job_update")
	b.ReportMetric(float64(largest), "rollout_largest_key_B")
	outcome := r.GetState().String()
	if stalled {
		outcome = fmt.Sprintf("STALLED (still %s, %d of %d nodes finished, no progress for 2m)", r.GetState(), lastDone, n)
	}
	b.Logf("rollout %s to %d nodes (--max-parallel 100%%, --healthy-for 0s): %s in %v, message %q; %d jobs received and %.0f job updates sent by the agents",
		id, n, outcome, wall.Round(time.Millisecond), r.GetMessage(), jobs1-jobs0, updates)
	b.Logf("rollout: etcd %.0f write txns (%.1f/s), %.0f keys put, %.1f MiB received (%.0f B per job update); rollout records in etcd now: %d keys, %.1f KiB, the largest key and value %.1f KiB; etcd db %.1f MiB",
		w.revs, w.revPerS, w.puts, w.recvd/(1<<20), w.recvd/max(updates, 1), keys, float64(size)/1024, float64(largest)/1024, e1.dbSize/(1<<20))
	b.Logf("rollout: controller %.3f cores on average, RSS peak %.1f MiB (sampled every 2s)", cpu.Seconds()/wall.Seconds(), mib(peakRSS.RSS))
	var saveErrs []string
	for _, line := range strings.Split(c.FullLog(), "\n") {
		if strings.Contains(line, "save rollout") {
			saveErrs = append(saveErrs, line)
		}
	}
	if len(saveErrs) > 0 {
		b.Logf("controller: %d failed saves of the rollout; the first: %s", len(saveErrs), saveErrs[0])
	}
	if stalled || r.GetState() != ferryv1.RolloutState_ROLLOUT_STATE_SUCCEEDED {
		b.Errorf("rollout to %d nodes on etcd ended %s, want SUCCEEDED", n, outcome)
	}
}
