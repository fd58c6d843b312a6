package gossip

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"math"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// testConfig is a member on loopback with timings short enough that a
// failure is detected in about a second.
func testConfig(t *testing.T, name string, key []byte, label string) Config {
	t.Helper()
	return Config{
		NodeName:       name,
		BindAddr:       "127.0.0.1",
		Key:            key,
		Label:          label,
		Meta:           Meta{NodeID: name, Role: RoleAgent, Group: "staging", AgentVersion: "v0.1.0"},
		Profile:        ProfileLocal,
		ProbeInterval:  200 * time.Millisecond,
		ProbeTimeout:   100 * time.Millisecond,
		GossipInterval: 50 * time.Millisecond,
		SuspicionMult:  3,
		Logger:         slog.New(slog.NewTextHandler(newTestWriter(t), &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
}

// testWriter sends log lines to t.Log until the test's cleanups have run;
// memberlist goroutines may still log while shutting down.
type testWriter struct {
	t    *testing.T
	mu   sync.Mutex
	done bool
}

func newTestWriter(t *testing.T) *testWriter {
	w := &testWriter{t: t}
	t.Cleanup(func() { // registered before the member's Shutdown, so runs after it
		w.mu.Lock()
		defer w.mu.Unlock()
		w.done = true
	})
	return w
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimSpace(string(p)))
	}
	return len(p), nil
}

func startMember(t *testing.T, cfg Config) *Member {
	t.Helper()
	m, err := Start(cfg)
	if err != nil {
		t.Fatalf("start %s: %v", cfg.NodeName, err)
	}
	t.Cleanup(func() { _ = m.Shutdown() })
	return m
}

func testKey(t *testing.T) []byte {
	t.Helper()
	k, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// startCluster starts n members (node-0 ... node-n-1) labelled ferry-test
// and joins each to every member started before it: a push/pull with each,
// so that forming the cluster does not hang on gossip rounds when the
// machine is loaded.
func startCluster(t *testing.T, n int, key []byte) []*Member {
	t.Helper()
	ms := make([]*Member, n)
	for i := range ms {
		ms[i] = startMember(t, testConfig(t, fmt.Sprintf("node-%d", i), key, "ferry-test"))
		var seeds []string
		for _, prev := range ms[:i] {
			seeds = append(seeds, prev.Addr())
		}
		if i > 0 {
			if _, err := ms[i].Join(seeds); err != nil {
				t.Fatalf("node-%d join: %v", i, err)
			}
		}
	}
	for _, m := range ms {
		waitFor(t, 20*time.Second, func() bool { return countAlive(m) == n },
			func() string { return fmt.Sprintf("%s sees all %d alive: %v", m.Name(), n, m.Members()) })
	}
	return ms
}

func countAlive(m *Member) int {
	n := 0
	for _, s := range m.Members() {
		if s.State == StateAlive {
			n++
		}
	}
	return n
}

func waitFor(t *testing.T, timeout time.Duration, cond func() bool, what func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting until %s", timeout, what())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// recorder collects the events of one member in the background.
type recorder struct {
	mu     sync.Mutex
	events []Event
}

func record(m *Member) *recorder {
	r := &recorder{}
	go func() {
		for e := range m.Events() {
			r.mu.Lock()
			r.events = append(r.events, e)
			r.mu.Unlock()
		}
	}()
	return r
}

// kinds lists the kinds of the events about one member.
func (r *recorder) kinds(name string) []EventKind { return r.kindsSince(0, name) }

// count is how many events were recorded so far, for kindsSince.
func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.events)
}

// kindsSince lists the kinds of the events about one member from the
// mark-th event on.
func (r *recorder) kindsSince(mark int, name string) []EventKind {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []EventKind
	for _, e := range r.events[mark:] {
		if e.Member.Name == name {
			out = append(out, e.Kind)
		}
	}
	return out
}

func TestClusterFormsWithMeta(t *testing.T) {
	key := testKey(t)
	ms := startCluster(t, 3, key)
	for _, m := range ms {
		for _, other := range ms {
			s, ok := m.Member(other.Name())
			if !ok {
				t.Fatalf("%s does not know %s", m.Name(), other.Name())
			}
			want := Meta{NodeID: other.Name(), Role: RoleAgent, Group: "staging", AgentVersion: "v0.1.0"}
			if s.Meta != want {
				t.Errorf("%s sees %s meta %+v, want %+v", m.Name(), other.Name(), s.Meta, want)
			}
			if s.Addr != other.Addr() {
				t.Errorf("%s sees %s at %s, want %s", m.Name(), other.Name(), s.Addr, other.Addr())
			}
			if st, _ := m.State(other.Name()); st != StateAlive {
				t.Errorf("%s sees %s %s, want alive", m.Name(), other.Name(), st)
			}
		}
		if hs := m.HealthScore(); hs < 0 {
			t.Errorf("%s health score %d", m.Name(), hs)
		}
	}
	if _, ok := ms[0].State("never-seen"); ok {
		t.Error("State of an unknown member reports ok")
	}
}

func TestUpdateMetaReachesPeers(t *testing.T) {
	ms := startCluster(t, 2, testKey(t))
	rec := record(ms[1])
	want := Meta{NodeID: "node-0", Role: RoleAgent, Group: "production", AgentVersion: "v0.2.0"}
	if err := ms[0].UpdateMeta(want, time.Second); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, func() bool {
		s, _ := ms[1].Member("node-0")
		return s.Meta == want
	}, func() string { return "node-1 sees node-0's new meta" })
	waitFor(t, 2*time.Second, func() bool { return slices.Contains(rec.kinds("node-0"), EventUpdate) },
		func() string { return fmt.Sprintf("an update event; got %v", rec.kinds("node-0")) })
}

func TestKilledMemberIsSuspectThenDead(t *testing.T) {
	ms := startCluster(t, 4, testKey(t))
	victim := ms[3]
	observers := ms[:3]
	recs := make([]*recorder, len(observers))
	for i, o := range observers {
		recs[i] = record(o)
	}
	killed := time.Now()
	if err := victim.Shutdown(); err != nil { // no Leave: a crash
		t.Fatal(err)
	}
	for i, o := range observers {
		waitFor(t, 15*time.Second, func() bool { st, _ := o.State("node-3"); return st == StateDead },
			func() string {
				st, _ := o.State("node-3")
				return fmt.Sprintf("%s sees node-3 dead (now %s)", o.Name(), st)
			})
		got := recs[i].kinds("node-3")
		si, di := slices.Index(got, EventSuspect), slices.Index(got, EventDead)
		if si < 0 || di < si {
			t.Errorf("%s saw node-3 go %v, want suspect then dead", o.Name(), got)
		}
	}
	t.Logf("all observers saw node-3 dead %s after it was killed", time.Since(killed).Round(time.Millisecond))
	// memberlist drops dead members from Members(); the table keeps them.
	s, ok := observers[0].Member("node-3")
	if !ok || s.State != StateDead || s.Since.IsZero() {
		t.Errorf("node-0's record of node-3 = %+v, %v", s, ok)
	}
	if countAlive(observers[0]) != 3 {
		t.Errorf("node-0 sees %d alive, want 3: %v", countAlive(observers[0]), observers[0].Members())
	}
}

func TestGracefulLeaveIsLeft(t *testing.T) {
	ms := startCluster(t, 3, testKey(t))
	rec := record(ms[0])
	if err := ms[2].Leave(2 * time.Second); err != nil {
		t.Fatal(err)
	}
	if err := ms[2].Shutdown(); err != nil {
		t.Fatal(err)
	}
	for _, o := range ms[:2] {
		waitFor(t, 5*time.Second, func() bool { st, _ := o.State("node-2"); return st == StateLeft },
			func() string {
				st, _ := o.State("node-2")
				return fmt.Sprintf("%s sees node-2 left (now %s)", o.Name(), st)
			})
	}
	// Long enough for a wrong "dead" verdict to have arrived.
	time.Sleep(time.Second)
	for _, o := range ms[:2] {
		if st, _ := o.State("node-2"); st != StateLeft {
			t.Errorf("%s sees node-2 %s after it left, want left", o.Name(), st)
		}
	}
	if got := rec.kinds("node-2"); slices.Contains(got, EventDead) || !slices.Contains(got, EventLeft) {
		t.Errorf("node-0 saw node-2 go %v, want left and never dead", got)
	}
	if err := ms[2].Leave(time.Second); err == nil {
		t.Error("Leave after Shutdown did not fail")
	}
}

func TestForgetRemovesUntilNewState(t *testing.T) {
	key := testKey(t)
	ms := startCluster(t, 3, key)
	if err := ms[2].Leave(2 * time.Second); err != nil {
		t.Fatal(err)
	}
	_ = ms[2].Shutdown()
	waitFor(t, 5*time.Second, func() bool { st, _ := ms[0].State("node-2"); return st == StateLeft },
		func() string { return "node-0 sees node-2 left" })
	ms[0].Forget("node-2")
	time.Sleep(500 * time.Millisecond) // several syncs
	if s, ok := ms[0].Member("node-2"); ok {
		t.Fatalf("node-2 is back after Forget: %+v", s)
	}
	// The node comes back under the same name: it is known again.
	back := startMember(t, testConfig(t, "node-2", key, "ferry-test"))
	if _, err := back.Join([]string{ms[0].Addr()}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, func() bool { st, _ := ms[0].State("node-2"); return st == StateAlive },
		func() string { return "node-0 sees the returned node-2 alive" })
}

func TestSeparateInstallationsDoNotMerge(t *testing.T) {
	key := testKey(t)
	tests := []struct {
		name           string
		keyB           []byte
		labelA, labelB string
	}{
		{"different labels", key, "ferry-a", "ferry-b"},
		{"different keys", testKey(t), "ferry-a", "ferry-a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := startMember(t, testConfig(t, "a", key, tt.labelA))
			b := startMember(t, testConfig(t, "b", tt.keyB, tt.labelB))
			if n, err := b.Join([]string{a.Addr()}); err == nil {
				t.Errorf("join across installations succeeded with %d seeds", n)
			}
			time.Sleep(300 * time.Millisecond)
			for _, m := range []*Member{a, b} {
				if got := m.Members(); len(got) != 1 {
					t.Errorf("%s sees %d members, want only itself: %v", m.Name(), len(got), got)
				}
			}
		})
	}
}

func TestEventsBoundedAndClosed(t *testing.T) {
	key := testKey(t)
	cfg := testConfig(t, "node-0", key, "ferry-test")
	cfg.EventBuffer = 1
	first := startMember(t, cfg)
	for i := 1; i < 3; i++ {
		m := startMember(t, testConfig(t, fmt.Sprintf("node-%d", i), key, "ferry-test"))
		if _, err := m.Join([]string{first.Addr()}); err != nil {
			t.Fatal(err)
		}
	}
	// Nobody reads first's events: gossip must not block, extras are dropped.
	waitFor(t, 10*time.Second, func() bool { return countAlive(first) == 3 },
		func() string { return "node-0 sees 3 alive without its events being read" })
	if first.DroppedEvents() == 0 {
		t.Error("no events dropped with a 1-event buffer and 3 joins")
	}
	if err := first.Shutdown(); err != nil {
		t.Fatal(err)
	}
	n := 0
	for range first.Events() { // must end: Shutdown closes the channel
		n++
	}
	if n != 1 {
		t.Errorf("drained %d buffered events, want 1", n)
	}
	if err := first.Shutdown(); err != nil {
		t.Errorf("second Shutdown: %v", err)
	}
}

func TestStartRejectsBadConfig(t *testing.T) {
	key := testKey(t)
	tests := []struct {
		name   string
		modify func(*Config)
		want   string
	}{
		{"no name", func(c *Config) { c.NodeName = "" }, "node name is empty"},
		{"no key", func(c *Config) { c.Key = nil }, "no key"},
		{"short key", func(c *Config) { c.Key = key[:10] }, "key is 10 bytes"},
		{"no label", func(c *Config) { c.Label = "" }, "label is empty"},
		{"long label", func(c *Config) { c.Label = strings.Repeat("x", 256) }, "label is 256 bytes"},
		{"unknown profile", func(c *Config) { c.Profile = "moon" }, `profile "moon" not known`},
		{"probe timeout too long", func(c *Config) { c.ProbeTimeout = time.Second }, "probe timeout"},
		{"dead time too short", func(c *Config) { c.GossipToTheDeadTime = 10 * time.Millisecond }, "gossip-to-the-dead time"},
		{"meta too large", func(c *Config) { c.Meta.Group = strings.Repeat("g", 600) }, "over memberlist's 512 byte limit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(t, "node-0", key, "ferry-test")
			tt.modify(&cfg)
			m, err := Start(cfg)
			if err == nil {
				_ = m.Shutdown()
				t.Fatal("Start accepted the config")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not mention %q", err, tt.want)
			}
		})
	}
}

func TestProfiles(t *testing.T) {
	key := testKey(t)
	tests := []struct {
		profile   string
		wantProbe time.Duration
	}{
		{"", time.Second},
		{ProfileLAN, time.Second},
		{ProfileLocal, time.Second},
		{ProfileWAN, 5 * time.Second},
	}
	for _, tt := range tests {
		t.Run("profile="+tt.profile, func(t *testing.T) {
			cfg := Config{NodeName: "n", Key: key, Label: "l", Profile: tt.profile}
			mc, err := cfg.memberlistConfig()
			if err != nil {
				t.Fatal(err)
			}
			if mc.ProbeInterval != tt.wantProbe {
				t.Errorf("probe interval %s, want %s", mc.ProbeInterval, tt.wantProbe)
			}
			if !bytes.Equal(mc.SecretKey, key) || mc.Label != "l" || !mc.GossipVerifyIncoming || !mc.GossipVerifyOutgoing {
				t.Errorf("encryption or label not enforced: %+v", mc)
			}
			cfg.ProbeInterval, cfg.SuspicionMult = 7*time.Second, 7
			if mc, err = cfg.memberlistConfig(); err != nil {
				t.Fatal(err)
			}
			if mc.ProbeInterval != 7*time.Second || mc.SuspicionMult != 7 {
				t.Errorf("overrides ignored: probe %s, suspicion mult %d", mc.ProbeInterval, mc.SuspicionMult)
			}
		})
	}
}

func TestMetaRoundTrip(t *testing.T) {
	tests := []Meta{
		{},
		{NodeID: "web-01", Role: RoleAgent, Group: "production", AgentVersion: "v1.2.3"},
		{NodeID: "controller", Role: RoleController},
		{NodeID: "ünïcødé", Group: strings.Repeat("g", 200)},
	}
	for _, want := range tests {
		t.Run(want.NodeID, func(t *testing.T) {
			b, err := want.Encode()
			if err != nil {
				t.Fatal(err)
			}
			got, err := DecodeMeta(b)
			if err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Errorf("round trip = %+v, want %+v", got, want)
			}
		})
	}
}

func TestDecodeMeta(t *testing.T) {
	good, _ := Meta{NodeID: "a", Role: "agent", Group: "g", AgentVersion: "v"}.Encode()
	tests := []struct {
		name    string
		in      []byte
		want    Meta
		wantErr string
	}{
		{"empty", nil, Meta{}, ""},
		{"older encoder with fewer fields", []byte{1, 1, 'a'}, Meta{NodeID: "a"}, ""},
		{"newer encoder with an extra field", append(slices.Clone(good), 2, 'x', 'y'), Meta{NodeID: "a", Role: "agent", Group: "g", AgentVersion: "v"}, ""},
		{"unknown version", []byte{9, 1, 'a'}, Meta{}, "version 9"},
		{"truncated", []byte{1, 5, 'a'}, Meta{}, "truncated"},
		{"length beyond any slice", binary.AppendUvarint([]byte{1}, math.MaxUint64), Meta{}, "truncated"},
		{"bad length varint", []byte{1, 0x80}, Meta{}, "truncated"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DecodeMeta(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one mentioning %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestMemberlistLogsReachSlog(t *testing.T) {
	h := &captureHandler{}
	w := slogWriter{logger: slog.New(h)}
	lines := []struct {
		in        string
		wantLevel slog.Level
		wantMsg   string
	}{
		{"[WARN] memberlist: Refuting a suspect message (from: b)\n", slog.LevelWarn, "Refuting a suspect message (from: b)"},
		{"[ERR] memberlist: Failed to send UDP ping: x", slog.LevelError, "Failed to send UDP ping: x"},
		{"[DEBUG] memberlist: Stream connection from=1.2.3.4", slog.LevelDebug, "Stream connection from=1.2.3.4"},
		{"[INFO] memberlist: Suspect b has failed", slog.LevelInfo, "Suspect b has failed"},
		{"[WARN] memberlist: ignoring alive message for 'x': not enrolled", slog.LevelDebug, "ignoring alive message for 'x': not enrolled"},
		{"no prefix at all", slog.LevelInfo, "no prefix at all"},
	}
	for _, l := range lines {
		if _, err := w.Write([]byte(l.in)); err != nil {
			t.Fatal(err)
		}
	}
	if len(h.records) != len(lines) {
		t.Fatalf("got %d records, want %d", len(h.records), len(lines))
	}
	for i, l := range lines {
		if r := h.records[i]; r.Level != l.wantLevel || r.Message != l.wantMsg {
			t.Errorf("line %q -> %s %q, want %s %q", l.in, r.Level, r.Message, l.wantLevel, l.wantMsg)
		}
	}
}

type captureHandler struct{ records []slog.Record }

func (h *captureHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *captureHandler) Handle(_ context.Context, r slog.Record) error {
	h.records = append(h.records, r)
	return nil
}
func (h *captureHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *captureHandler) WithGroup(string) slog.Handler      { return h }

func TestLayoutCheckCatchesChanges(t *testing.T) {
	type reordered struct {
		nodeStateMirror
	}
	type wrongField struct {
		Node        struct{}
		Incarnation uint64
	}
	want := reflect.TypeFor[nodeStateMirror]()
	if err := sameLayout(want, want); err != nil {
		t.Fatalf("identical layout rejected: %v", err)
	}
	for _, typ := range []reflect.Type{reflect.TypeFor[reordered](), reflect.TypeFor[wrongField](), reflect.TypeFor[int]()} {
		if err := sameLayout(typ, want); err == nil {
			t.Errorf("layout %s accepted as nodeState", typ)
		}
	}
}

func TestNewKey(t *testing.T) {
	a, b := testKey(t), testKey(t)
	if len(a) != KeySize || bytes.Equal(a, b) {
		t.Errorf("keys %x and %x: want two different %d-byte keys", a, b, KeySize)
	}
}
