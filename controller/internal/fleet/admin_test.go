package fleet

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/ferrydeploy/ferry/controller/internal/store"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// Pages follow each other in ID order without gaps or repeats, end at
// the count or the byte budget (whichever comes first, with at least one
// node), and the last one says there is no more.
func TestPage(t *testing.T) {
	var recs []store.NodeRecord
	for i := range 25 {
		r := enrolled(fmt.Sprintf("n%02d", i), "prod")
		if i%5 == 0 {
			r.Group = "staging"
		}
		recs = append(recs, r)
	}
	f := newFleet(t, recs...)
	if _, err := f.Remove("n03", "admin/alice", nil); err != nil {
		t.Fatal(err)
	}
	all := ids(f.List(Filter{Group: "prod", HideRemoved: true}))
	if slices.Contains(all, "n03") || len(all) != 19 {
		t.Fatalf("List(prod, hiding removed) = %v, want the 19 prod nodes but n03", all)
	}
	one := proto.Size(f.node("n01"))
	for _, tc := range []struct {
		name          string
		limit, budget int
		wantPage      int
	}{
		{"by count", 7, 1 << 20, 7},
		{"by bytes", 100, 3*one + one/2, 3},
		{"budget below one node", 100, 1, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			after := ""
			for pages := 0; ; pages++ {
				if pages > 25 {
					t.Fatal("paging did not end")
				}
				nodes, next := f.Page(Filter{Group: "prod", HideRemoved: true}, after, tc.limit, tc.budget)
				if next != "" && len(nodes) != tc.wantPage {
					t.Fatalf("page %d has %d nodes, want %d", pages, len(nodes), tc.wantPage)
				}
				got = append(got, ids(nodes)...)
				if next == "" {
					break
				}
				after = next
			}
			if !slices.Equal(got, all) {
				t.Errorf("pages = %v, want %v", got, all)
			}
		})
	}
}

// An admin's change is stored with its audit event in one transaction;
// a refused change stores neither; a removed node cannot be changed.
func TestUpdate(t *testing.T) {
	f := newFleet(t, enrolled("n1", "prod"), enrolled("gone", "prod"))
	if _, err := f.Remove("gone", "admin/alice", nil); err != nil {
		t.Fatal(err)
	}
	changes := f.Changes()
	n, err := f.Update("n1", func(r *store.NodeRecord) error {
		r.Group, r.Labels = "staging", map[string]string{"role": "db"}
		return nil
	}, &ferryv1.AuditEvent{Action: "node.move", Target: "n1", Outcome: "ok"})
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"group": "staging", "role": "db"}; n.Group != "staging" || !maps.Equal(n.Labels, want) {
		t.Errorf("node after update: group %q labels %v, want staging and %v", n.Group, n.Labels, want)
	}
	select {
	case <-changes:
	default:
		t.Error("watchers were not woken by the change")
	}
	if got := ids(f.Match(&ferryv1.Target{Selector: map[string]string{"role": "db"}})); !slices.Equal(got, []string{"n1"}) {
		t.Errorf("Match(role=db) = %v, want [n1]", got)
	}
	refused := errors.New("refused")
	if _, err := f.Update("n1", func(r *store.NodeRecord) error { r.Group = "x"; return refused }, &ferryv1.AuditEvent{Action: "node.move"}); !errors.Is(err, refused) {
		t.Fatalf("refused Update = %v, want the change's error", err)
	}
	if _, err := f.Update("gone", func(*store.NodeRecord) error { return nil }, &ferryv1.AuditEvent{Action: "node.label"}); !errors.Is(err, ErrRemoved) {
		t.Errorf("Update of a removed node = %v, want ErrRemoved", err)
	}
	// What was stored, as a restarted controller sees it.
	reopened := f.open()
	if n := reopened.List(Filter{})[1]; n.Id != "n1" || n.Group != "staging" || n.Labels["role"] != "db" {
		t.Errorf("after reopening: %s group %q labels %v, want n1 in staging with role=db", n.Id, n.Group, n.Labels)
	}
	evs, err := f.store.AuditEvents(0)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 1 || evs[0].Action != "node.move" {
		t.Errorf("audit log %v, want the one successful change", evs)
	}
}

// Purging deletes the record with its audit event, closes the stream and
// forgets the node, so its certificate is refused; watchers are woken.
func TestPurge(t *testing.T) {
	f := newFleet(t, enrolled("n1", "prod"), enrolled("n2", "prod"))
	s := f.attach("n1")
	if err := f.Purge("n1", &ferryv1.AuditEvent{Action: "node.purge", Target: "n1"}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.Done():
	default:
		t.Error("the purged node's stream is still open")
	}
	if _, ok := f.Node("n1"); ok {
		t.Error("the purged node is still listed")
	}
	if got := ids(f.open().List(Filter{})); !slices.Equal(got, []string{"n2"}) {
		t.Errorf("after reopening, nodes = %v, want [n2]", got)
	}
	if err := f.Purge("n1", &ferryv1.AuditEvent{}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("second Purge = %v, want ErrNotFound", err)
	}
	evs, _ := f.store.AuditEvents(0)
	if len(evs) != 1 || evs[0].Action != "node.purge" {
		t.Errorf("audit log %v, want one node.purge", evs)
	}
}

func TestStatuses(t *testing.T) {
	f := newFleet(t, enrolled("b", "prod"), enrolled("a", "prod"), enrolled("c", "staging"))
	f.attach("b")
	got := f.Statuses(Filter{Group: "prod"})
	want := []Status{{ID: "a", Group: "prod", State: pending}, {ID: "b", Group: "prod", State: healthy, Connected: true}}
	if len(got) != len(want) {
		t.Fatalf("Statuses = %+v, want %+v", got, want)
	}
	for i := range want {
		got[i].Reason = ""
		if got[i] != want[i] {
			t.Errorf("Statuses[%d] = %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestCheckReports(t *testing.T) {
	long := strings.Repeat("x", MaxFactLen+1)
	many := make([]*ferryv1.InstalledPackage, MaxInstalled+1)
	for i := range many {
		many[i] = &ferryv1.InstalledPackage{Name: "p", Version: "1"}
	}
	tests := []struct {
		name    string
		check   func() error
		wantErr string
	}{
		{"normal hello", func() error {
			return CheckHello(&ferryv1.AgentHello{AgentVersion: "1.0", Facts: &ferryv1.Facts{Os: "linux", Hostname: "n1"}, Installed: many[:3]})
		}, ""},
		{"long host name", func() error { return CheckHello(&ferryv1.AgentHello{Facts: &ferryv1.Facts{Hostname: long}}) }, "hello: host name is 257 bytes: at most 256"},
		{"long kernel in a heartbeat", func() error { return CheckHeartbeat(&ferryv1.Heartbeat{Facts: &ferryv1.Facts{Kernel: long}}) }, "heartbeat: kernel is 257 bytes"},
		{"long agent version", func() error { return CheckHeartbeat(&ferryv1.Heartbeat{AgentVersion: long}) }, "agent version is 257 bytes"},
		{"too many packages", func() error { return CheckHeartbeat(&ferryv1.Heartbeat{Installed: many}) }, "257 installed packages: at most 256"},
		{"long package version", func() error {
			return CheckHeartbeat(&ferryv1.Heartbeat{Installed: []*ferryv1.InstalledPackage{{Name: "go", Version: long}}})
		}, "package version is 257 bytes"},
		{"heartbeat with disks", func() error {
			return CheckHeartbeat(&ferryv1.Heartbeat{Disks: []*ferryv1.DiskSpace{{Path: "/var/lib/ferry-agent", Uses: []string{"state dir", "install root"}}}})
		}, ""},
		{"too many disks", func() error { return CheckHeartbeat(&ferryv1.Heartbeat{Disks: make([]*ferryv1.DiskSpace, MaxDisks+1)}) }, "65 file systems: at most 64"},
		{"long disk path", func() error { return CheckHeartbeat(&ferryv1.Heartbeat{Disks: []*ferryv1.DiskSpace{{Path: long}}}) }, "file system path is 257 bytes"},
		{"long disk use", func() error {
			return CheckHeartbeat(&ferryv1.Heartbeat{Disks: []*ferryv1.DiskSpace{{Path: "/", Uses: []string{long}}}})
		}, "file system use is 257 bytes"},
		{"heartbeat with drift", func() error {
			return CheckHeartbeat(&ferryv1.Heartbeat{Drift: &ferryv1.DriftReport{Packages: []*ferryv1.PackageDrift{{Name: "go", Version: "1", Changed: 3, Examples: []string{"/usr/local/go/bin/go: missing"}}}}})
		}, ""},
		{"drift of too many packages", func() error {
			return CheckHeartbeat(&ferryv1.Heartbeat{Drift: &ferryv1.DriftReport{Packages: make([]*ferryv1.PackageDrift, MaxInstalled+1)}})
		}, "drift report lists 257 packages"},
		{"too many drift examples", func() error {
			return CheckHeartbeat(&ferryv1.Heartbeat{Drift: &ferryv1.DriftReport{Packages: []*ferryv1.PackageDrift{{Name: "go", Examples: make([]string, MaxDriftExamples+1)}}}})
		}, "drift of go names 9 differences"},
		{"long drift example", func() error {
			return CheckHeartbeat(&ferryv1.Heartbeat{Drift: &ferryv1.DriftReport{Packages: []*ferryv1.PackageDrift{{Name: "go", Examples: []string{long}}}}})
		}, "drift example is 257 bytes"},
		{"long gossip address", func() error { return CheckHello(&ferryv1.AgentHello{GossipAddress: long}) }, "gossip address is 257 bytes"},
		{"huge job report", func() error {
			return CheckJobUpdate(&ferryv1.JobUpdate{JobId: "j1", Message: strings.Repeat("m", MaxJobUpdate)})
		}, "job j1 report is"},
		{"too many steps", func() error {
			return CheckJobUpdate(&ferryv1.JobUpdate{JobId: "j1", Steps: make([]*ferryv1.StepResult, MaxJobSteps+1)})
		}, "257 step results"},
		{"huge job report in a hello", func() error {
			return CheckHello(&ferryv1.AgentHello{RecentJobs: []*ferryv1.JobUpdate{{JobId: "j1", Message: strings.Repeat("m", MaxJobUpdate)}}})
		}, "job j1 report is"},
		{"huge log", func() error {
			return CheckJobLog(&ferryv1.JobLog{JobId: "j1", Text: strings.Repeat("l", MaxJobUpdate+1)})
		}, "at most 1048576"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.check()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, ErrReportTooLarge) {
				t.Fatalf("got %v, want ErrReportTooLarge saying %q", err, tt.wantErr)
			}
		})
	}
}
