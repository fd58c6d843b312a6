package gossip

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// Three members rotate to a new key: each installs it at once, encrypts
// with it after the switch, drops the old one at its retirement, and none
// ever suspects another on the way.
func TestRotateKeyDoesNotPartition(t *testing.T) {
	oldKey, newKey := testKey(t), testKey(t)
	members := startCluster(t, 3, oldKey)
	recs := make([]*recorder, len(members))
	for i, m := range members {
		recs[i] = record(m)
	}
	for _, m := range members {
		if err := m.RotateKey(newKey, 300*time.Millisecond, time.Second); err != nil {
			t.Fatalf("%s: %v", m.Name(), err)
		}
		if keys := m.Keys(); len(keys) != 2 || !bytes.Equal(keys[0], oldKey) {
			t.Fatalf("%s right after RotateKey holds %d keys, primary new=%v; want both, the old one still primary", m.Name(), len(keys), bytes.Equal(keys[0], newKey))
		}
	}
	for _, m := range members {
		waitFor(t, 5*time.Second, func() bool { return bytes.Equal(m.Keys()[0], newKey) },
			func() string { return m.Name() + " encrypts with the new key" })
	}
	for _, m := range members {
		waitFor(t, 5*time.Second, func() bool { return len(m.Keys()) == 1 },
			func() string { return fmt.Sprintf("%s holds only the new key (has %d)", m.Name(), len(m.Keys())) })
	}
	time.Sleep(time.Second) // a few probe rounds on the new key alone
	for i, m := range members {
		for _, other := range members {
			if st, _ := m.State(other.Name()); st != StateAlive {
				t.Errorf("%s sees %s %s after the rotation, want alive", m.Name(), other.Name(), st)
			}
			if got := recs[i].kinds(other.Name()); slices.Contains(got, EventSuspect) || slices.Contains(got, EventDead) {
				t.Errorf("%s saw %s go %v during the rotation: it partitioned the cluster", m.Name(), other.Name(), got)
			}
		}
	}
	newcomer := startMember(t, testConfig(t, "newcomer", newKey, "ferry-test"))
	if _, err := newcomer.Join([]string{members[0].Addr()}); err != nil {
		t.Errorf("a member with the new key cannot join: %v", err)
	}
	intruder := startMember(t, testConfig(t, "intruder", oldKey, "ferry-test"))
	if _, err := intruder.Join([]string{members[0].Addr()}); err == nil {
		t.Error("a member with the retired key joined")
	}
}

// The old key works until it is retired and not after: a member holding
// only the old key can no longer join once the members switch (their
// answers are under the new key), and nothing sent with the old key is
// accepted once they retire it (the meter speaks the old key but reads the
// new one, so it joins exactly while the old key is accepted).
func TestOldKeyWorksUntilRetired(t *testing.T) {
	oldKey, newKey := testKey(t), testKey(t)
	members := startCluster(t, 3, oldKey)
	intruder := startMember(t, testConfig(t, "intruder", oldKey, "ferry-test"))
	meter := startMember(t, testConfig(t, "meter", oldKey, "ferry-test"))
	if err := meter.RotateKey(newKey, time.Hour, time.Hour); err != nil {
		t.Fatal(err)
	}
	const switchIn, retireIn = 300 * time.Millisecond, time.Second
	rotated := time.Now()
	for _, m := range members {
		if err := m.RotateKey(newKey, switchIn, retireIn); err != nil {
			t.Fatal(err)
		}
	}
	joins := func(m *Member) (n int) {
		for _, other := range members {
			if k, err := m.Join([]string{other.Addr()}); err == nil && k > 0 {
				n++
			}
		}
		return n
	}
	var joinsRefused, retired time.Duration
	for joinsRefused == 0 || retired == 0 {
		if joinsRefused == 0 && joins(intruder) == 0 {
			joinsRefused = time.Since(rotated)
		}
		if retired == 0 && joins(meter) == 0 {
			retired = time.Since(rotated)
		}
		if time.Since(rotated) > 20*time.Second {
			t.Fatal("the old key still works 20s after the rotation")
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("a member with only the old key could no longer join %s after the rotation, and the old key was not accepted at all after %s (switch after %s, retire %s later)",
		joinsRefused.Round(time.Millisecond), retired.Round(time.Millisecond), switchIn, retireIn)
	if joinsRefused < switchIn {
		t.Errorf("joins with the old key were refused after %s, before the switch at %s", joinsRefused, switchIn)
	}
	if retired < switchIn+retireIn {
		t.Errorf("the old key stopped being accepted after %s, before its retirement at %s", retired, switchIn+retireIn)
	}
}

// A member left on the old key (a removed node) drops out: once the key is
// retired everyone finds it dead, and what it says is not accepted. Until
// then it can still get its suspicions of the others accepted (it hears
// nobody after the switch), even have one declared dead; they refute, at
// the latest at the next push/pull (1 s here, 30 s on a LAN), and nobody
// is declared dead after that.
func TestMemberOnTheOldKeyDropsOut(t *testing.T) {
	oldKey, newKey := testKey(t), testKey(t)
	ms := make([]*Member, 4)
	for i := range ms {
		cfg := testConfig(t, fmt.Sprintf("node-%d", i), oldKey, "ferry-test")
		cfg.PushPullInterval = time.Second
		ms[i] = startMember(t, cfg)
		if i > 0 {
			if _, err := ms[i].Join([]string{ms[0].Addr()}); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, m := range ms {
		waitFor(t, 20*time.Second, func() bool { return countAlive(m) == len(ms) },
			func() string { return fmt.Sprintf("%s sees all alive: %v", m.Name(), m.Members()) })
	}
	members, revoked := ms[:3], ms[3]
	recs := make([]*recorder, len(members))
	for i, m := range members {
		recs[i] = record(m)
	}
	const switchIn, retireIn = 200 * time.Millisecond, 500 * time.Millisecond
	for _, m := range members {
		if err := m.RotateKey(newKey, switchIn, retireIn); err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range members {
		waitFor(t, 15*time.Second, func() bool { st, _ := m.State(revoked.Name()); return st == StateDead },
			func() string {
				st, _ := m.State(revoked.Name())
				return fmt.Sprintf("%s finds the old-key member dead (now %s)", m.Name(), st)
			})
	}
	for _, m := range members {
		waitFor(t, 5*time.Second, func() bool { return len(m.Keys()) == 1 },
			func() string { return m.Name() + " retires the old key" })
	}
	for _, m := range members {
		for _, other := range members {
			waitFor(t, 10*time.Second, func() bool { st, _ := m.State(other.Name()); return st == StateAlive },
				func() string {
					st, _ := m.State(other.Name())
					return fmt.Sprintf("%s sees %s alive again (now %s)", m.Name(), other.Name(), st)
				})
		}
	}
	marks := make([]int, len(recs))
	for i, r := range recs {
		marks[i] = r.count()
	}
	// The broadcast succeeds (memberlist cannot know nobody decrypts it);
	// nobody takes it.
	_ = revoked.UpdateMeta(Meta{NodeID: revoked.Name(), Group: "changed"}, time.Second)
	time.Sleep(2 * time.Second)
	for i, m := range members {
		if s, _ := m.Member(revoked.Name()); s.State != StateDead || s.Meta.Group == "changed" {
			t.Errorf("%s accepted the old-key member's news: %+v", m.Name(), s)
		}
		for _, other := range members {
			if got := recs[i].kindsSince(marks[i], other.Name()); len(got) > 0 {
				t.Errorf("%s saw %s go %v after the old key was retired", m.Name(), other.Name(), got)
			}
		}
	}
}

// The schedule, step by step (timers are hours away and never fire).
func TestKeySchedule(t *testing.T) {
	k1, k2, k3 := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32), bytes.Repeat([]byte{3}, 32)
	t0 := time.Now()
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	const h = time.Hour
	type step struct {
		rotate []byte // rotate to this key at the step's time, or apply the schedule
		at     time.Duration
		// switchIn and retireIn of the rotation; zero means h and 2h.
		switchIn, retireIn time.Duration
		want               [][]byte // keys after the step, primary first
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"install, switch, retire", []step{
			{rotate: k2, at: 0, want: [][]byte{k1, k2}},
			{at: h - 1, want: [][]byte{k1, k2}},
			{at: h, want: [][]byte{k2, k1}},
			{at: 3*h - 1, want: [][]byte{k2, k1}},
			{at: 3 * h, want: [][]byte{k2}},
		}},
		{"the same key again changes nothing", []step{
			{rotate: k2, at: 0, want: [][]byte{k1, k2}},
			{rotate: k2, at: 2 * h, want: [][]byte{k2, k1}},
			{at: 3 * h, want: [][]byte{k2}},
		}},
		{"a second rotation keeps the first key's retirement", []step{
			{rotate: k2, at: 0, want: [][]byte{k1, k2}},
			{rotate: k3, at: 2 * h, want: [][]byte{k2, k1, k3}},
			{at: 3 * h, want: [][]byte{k3, k2}},
			{at: 5 * h, want: [][]byte{k3}},
		}},
		{"a second rotation before the switch", []step{
			{rotate: k2, at: 0, retireIn: -1, want: [][]byte{k1, k2}},
			{rotate: k3, at: h / 2, switchIn: 2 * h, retireIn: -1, want: [][]byte{k1, k2, k3}},
			// k1 is due at h but stays until k3 is primary; k2 never is.
			{at: h, want: [][]byte{k1, k2, k3}},
			{at: h/2 + 2*h, want: [][]byte{k3}},
		}},
		{"rotating back to a retiring key keeps it", []step{
			{rotate: k2, at: 0, want: [][]byte{k1, k2}},
			{rotate: k1, at: h / 2, want: [][]byte{k1, k2}},
			{at: h/2 + h, want: [][]byte{k1, k2}},
			{at: h/2 + 3*h, want: [][]byte{k1}},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := newKeySchedule(k1)
			if err != nil {
				t.Fatal(err)
			}
			defer s.stop()
			for i, st := range tt.steps {
				if st.rotate != nil {
					switchIn, retireIn := cmp.Or(st.switchIn, h), cmp.Or(st.retireIn, 2*h)
					if err := s.rotate(st.rotate, at(st.at), switchIn, max(retireIn, 0)); err != nil {
						t.Fatal(err)
					}
				} else {
					s.mu.Lock()
					s.applyLocked(at(st.at))
					s.mu.Unlock()
				}
				if got := s.ring.GetKeys(); !slices.EqualFunc(got, st.want, bytes.Equal) {
					t.Fatalf("step %d (at %s): keys %v, want %v", i, st.at, names(got, k1, k2, k3), names(st.want, k1, k2, k3))
				}
			}
		})
	}
}

func names(keys [][]byte, known ...[]byte) string {
	var out []string
	for _, k := range keys {
		out = append(out, fmt.Sprintf("k%d", slices.IndexFunc(known, func(c []byte) bool { return bytes.Equal(c, k) })+1))
	}
	return "[" + strings.Join(out, " ") + "]"
}

func TestRotateKeyRefusesBadKeys(t *testing.T) {
	m := startMember(t, testConfig(t, "node-0", testKey(t), "ferry-test"))
	if err := m.RotateKey([]byte("short"), 0, 0); err == nil || !strings.Contains(err.Error(), "key is 5 bytes") {
		t.Errorf("short key: %v, want an error naming its size", err)
	}
	_ = m.Shutdown()
	if err := m.RotateKey(testKey(t), 0, 0); err == nil {
		t.Error("RotateKey after Shutdown succeeded")
	}
}

// A member with Admit never records what it refuses; members without one
// still do.
func TestAdmitDropsAliveMessages(t *testing.T) {
	key := testKey(t)
	first := startMember(t, testConfig(t, "node-0", key, "ferry-test"))
	other := startMember(t, testConfig(t, "node-1", key, "ferry-test"))
	if _, err := other.Join([]string{first.Addr()}); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, "guard", key, "ferry-test")
	cfg.Admit = func(name, addr string) error {
		if want := other.Addr(); name == "node-1" && addr != want {
			return fmt.Errorf("node-1 is at %s, not %s", want, addr)
		}
		if name == "intruder" {
			return errors.New("not enrolled")
		}
		return nil
	}
	guard := startMember(t, cfg)
	if _, err := guard.Join([]string{first.Addr()}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, func() bool { return countAlive(guard) == 3 },
		func() string { return fmt.Sprintf("guard sees node-0, node-1 and itself alive: %v", guard.Members()) })

	intruder := startMember(t, testConfig(t, "intruder", key, "ferry-test"))
	if _, err := intruder.Join([]string{first.Addr(), guard.Addr()}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, func() bool { st, _ := first.State("intruder"); return st == StateAlive },
		func() string { return "node-0 (no Admit) sees the intruder alive" })
	time.Sleep(time.Second) // several gossip rounds
	if s, ok := guard.Member("intruder"); ok {
		t.Errorf("guard recorded the refused intruder: %+v", s)
	}
	if s, _ := guard.Member("node-1"); s.Addr != other.Addr() || s.State != StateAlive {
		t.Errorf("guard's node-1 = %+v, want alive at %s", s, other.Addr())
	}
}
