package fleettest

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// siteMirror serves artifacts by name, or wrong bytes for them when bad.
type siteMirror struct {
	mu    sync.Mutex
	files map[string][]byte
	bad   bool
	hits  map[string]int
}

func (m *siteMirror) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	m.mu.Lock()
	name := strings.TrimPrefix(r.URL.Path, "/ferry/")
	data, ok := m.files[name]
	m.hits[name]++
	bad := m.bad
	m.mu.Unlock()
	if !ok {
		http.NotFound(w, r)
		return
	}
	if bad {
		data = bytes.Clone(data)
		data[len(data)/2] ^= 1
	}
	_, _ = w.Write(data)
}

// jobLog is a node's stored output of a rollout, one line a record.
func (f *fleet) jobLog(rolloutID, nodeID string) string {
	f.t.Helper()
	var text strings.Builder
	for _, r := range f.jobLogs(rolloutID, nodeID) {
		text.WriteString(r.GetText() + "\n")
	}
	return text.String()
}

// Agents of a group with a mirror fetch from it; others, and all of them
// when the mirror serves wrong bytes or is removed, from the controller.
func TestGroupMirror(t *testing.T) {
	f := newFleet(t, nil)
	site := f.token("sh1", 2)
	var agents []*testAgent
	for _, id := range []string{"sh1-a", "sh1-b"} {
		agents = append(agents, f.enroll(id, site))
	}
	agents = append(agents, f.enroll("hq-a", f.token("hq", 1)))
	for _, a := range agents {
		f.start(a)
		f.waitState(a.id, healthy, 5*time.Second)
	}
	mirror := &siteMirror{files: map[string][]byte{}, hits: map[string]int{}}
	srv := httptest.NewServer(mirror)
	t.Cleanup(srv.Close)
	arts := ferryv1.NewArtifactServiceClient(f.admin)
	ctx := context.Background()
	if _, err := arts.SetMirror(ctx, &ferryv1.SetMirrorRequest{Mirror: &ferryv1.Mirror{Group: "sh1", UrlPrefix: srv.URL + "/ferry/"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := arts.SetMirror(ctx, &ferryv1.SetMirrorRequest{Mirror: &ferryv1.Mirror{Group: "sh1", UrlPrefix: "ftp://mirror"}}); err == nil || !strings.Contains(err.Error(), "give an http:// or https:// URL") {
		t.Errorf("an ftp mirror: %v", err)
	}

	for _, v := range []string{"1.0", "2.0"} {
		tarball := toolTarball(t, v, 1<<20)
		name := "tool-" + v + ".tar.gz"
		f.push(name, v, tarball)
		mirror.mu.Lock()
		mirror.files[name] = tarball
		mirror.bad = v == "2.0"
		mirror.mu.Unlock()
		f.apply(`name: tool
version: "` + v + `"
artifact: ` + name + `
steps:
  - archive: {dest: /opt/tool, strip_components: 1}
  - check: {run: "$FERRY_ROOT/opt/tool/bin/tool", expect: "tool ` + v + `"}
`)
		ids := map[string]string{}
		for _, g := range []string{"sh1", "hq"} {
			r := f.rollout(&ferryv1.CreateRolloutRequest{PackageName: "tool", PackageVersion: v, Target: &ferryv1.Target{Group: g}, Strategy: fast()})
			if r.State != ferryv1.RolloutState_ROLLOUT_STATE_SUCCEEDED {
				t.Fatalf("rollout %s to %s ended %s: %s %v", v, g, r.State, r.Message, r.Nodes)
			}
			ids[g] = r.Id
		}
		mirror.mu.Lock()
		hits := mirror.hits[name]
		mirror.mu.Unlock()
		if hits != 2 {
			t.Errorf("tool %s: the mirror was asked %d times; want once by each sh1 node", v, hits)
		}
		for _, id := range []string{"sh1-a", "sh1-b"} {
			logText := f.jobLog(ids["sh1"], id)
			want := "from the mirror " + srv.URL + "/ferry/" + name
			if v == "2.0" {
				want = "mirror " + srv.URL + "/ferry/" + name + " served wrong bytes, discarded"
			}
			if !strings.Contains(logText, want) {
				t.Errorf("tool %s: job log of %s lacks %q:\n%s", v, id, want, logText)
			}
		}
		if logText := f.jobLog(ids["hq"], "hq-a"); strings.Contains(logText, "mirror") {
			t.Errorf("tool %s: the hq node, whose group has no mirror, used one:\n%s", v, logText)
		}
	}
	list, err := arts.ListMirrors(ctx, &ferryv1.ListMirrorsRequest{})
	if err != nil || len(list.Mirrors) != 1 || list.Mirrors[0].UrlPrefix != srv.URL+"/ferry" || list.Mirrors[0].SetBy != "admin/admin" {
		t.Errorf("list mirrors: %v %v", list, err)
	}
	if _, err := arts.DeleteMirror(ctx, &ferryv1.DeleteMirrorRequest{Group: "sh1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := arts.DeleteMirror(ctx, &ferryv1.DeleteMirrorRequest{Group: "sh1"}); err == nil || !strings.Contains(err.Error(), "has no mirror") {
		t.Errorf("second removal: %v", err)
	}
}
