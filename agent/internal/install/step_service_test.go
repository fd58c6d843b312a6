package install

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ferrydeploy/ferry/agent/internal/install/systemctltest"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

func serviceStep(unit string, action ferryv1.ServiceAction, timeout time.Duration) *ferryv1.Step {
	s := &ferryv1.ServiceStep{Unit: unit, Action: action}
	if timeout > 0 {
		s.Timeout = durationpb.New(timeout)
	}
	return &ferryv1.Step{Kind: &ferryv1.Step_Service{Service: s}}
}

const (
	restart = ferryv1.ServiceAction_SERVICE_ACTION_RESTART
	reload  = ferryv1.ServiceAction_SERVICE_ACTION_RELOAD
	enable  = ferryv1.ServiceAction_SERVICE_ACTION_ENABLE
)

// stubSystemctl puts a stub systemctl first on PATH for this test only;
// its unit reads the file at config and comes up only when it holds "ok".
func stubSystemctl(t *testing.T, config string) *systemctltest.Stub {
	t.Helper()
	s, err := systemctltest.New(filepath.Join(t.TempDir(), "bin"))
	must(t, err)
	t.Setenv("PATH", s.Dir()+string(os.PathListSeparator)+os.Getenv("PATH"))
	must(t, s.Watch(config, "ok"))
	return s
}

func wantActions(t *testing.T, s *systemctltest.Stub, want ...string) {
	t.Helper()
	got, err := s.Actions()
	must(t, err)
	if !slices.Equal(got, want) {
		t.Fatalf("systemctl was run with %q, want %q", got, want)
	}
}

func readText(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	must(t, err)
	return string(b)
}

func TestServiceRestart(t *testing.T) {
	e := newEnv(t)
	conf := e.path("/etc/myapp/config")
	s := stubSystemctl(t, conf)
	must(t, s.SetActive("active"))
	v1 := pkg("myapp", "1", "", fileStep("/etc/myapp/config", "ok v1\n", 0o644), serviceStep("myapp.service", restart, 5*time.Second))

	u := e.install(v1, "")
	wantPhase(t, u, succeeded)
	wantActions(t, s, "restart -- myapp.service")
	if st := u.GetSteps()[1]; !st.GetChanged() || !strings.Contains(st.GetDetail(), "myapp.service is active") || st.GetName() != "service restart myapp.service" {
		t.Errorf("service step result %v", st)
	}

	// The same version again: nothing changed, the unit is active, so it
	// is not restarted.
	wantPhase(t, e.install(v1, ""), unchanged)
	wantActions(t, s, "restart -- myapp.service")

	// Stopped behind Ferry's back: the same version starts it again.
	must(t, s.SetActive("inactive"))
	wantPhase(t, e.install(v1, ""), succeeded)
	wantActions(t, s, "restart -- myapp.service", "restart -- myapp.service")
	if s.Active() != "active" {
		t.Fatalf("unit is %s after the repair", s.Active())
	}
}

// TestServiceNeverActiveUndoes: the new config keeps the unit from coming
// up, so the step times out, the old config is put back and the unit is
// restarted on it, active again.
func TestServiceNeverActiveUndoes(t *testing.T) {
	for _, bad := range []string{"activating", "failed"} {
		t.Run(bad, func(t *testing.T) {
			e := newEnv(t)
			conf := e.path("/etc/myapp/config")
			s := stubSystemctl(t, conf)
			must(t, s.SetBadState(bad))
			must(t, s.SetActive("active"))
			step := serviceStep("myapp.service", restart, time.Second)
			wantPhase(t, e.install(pkg("myapp", "1", "", fileStep("/etc/myapp/config", "ok v1\n", 0o644), step), ""), succeeded)
			before := snapshot(t, e.root)

			u := e.install(pkg("myapp", "2", "", fileStep("/etc/myapp/config", "bad v2\n", 0o644), step), "")
			wantPhase(t, u, failed)
			want := "did not become active within 1s (it is activating)"
			if bad == "failed" {
				want = "myapp.service failed to start"
			}
			if !strings.Contains(u.GetMessage(), want) || !strings.Contains(u.GetMessage(), "the 2 changes already applied were undone") || u.GetFailedStep() != "service restart myapp.service" {
				t.Fatalf("message %q (failed step %q), want it to say %q and that the changes were undone", u.GetMessage(), u.GetFailedStep(), want)
			}
			if got := readText(t, conf); got != "ok v1\n" {
				t.Fatalf("config after the failed job: %q, want the old one back", got)
			}
			if after := snapshot(t, e.root); after != before {
				t.Errorf("the node changed:\nbefore %s\nafter  %s", before, after)
			}
			// Restarted on v2 (never came up), then again on the restored v1.
			wantActions(t, s, "restart -- myapp.service", "restart -- myapp.service", "restart -- myapp.service")
			if s.Active() != "active" {
				t.Fatalf("unit is %s after the undo, want active on the restored config", s.Active())
			}
			if got := e.inst.Installed(); len(got) != 1 || got[0].GetVersion() != "1" {
				t.Fatalf("installed %v, want myapp 1 still", got)
			}
		})
	}
}

// TestServiceUndoneWhenALaterCheckFails: the unit comes up, a check after
// it fails; the file is restored first and the unit restarted on it.
func TestServiceUndoneWhenALaterCheckFails(t *testing.T) {
	e := newEnv(t)
	conf := e.path("/etc/myapp/config")
	s := stubSystemctl(t, conf)
	must(t, os.MkdirAll(filepath.Dir(conf), 0o755))
	must(t, os.WriteFile(conf, []byte("ok old\n"), 0o644))
	must(t, s.SetActive("active"))
	u := e.install(pkg("myapp", "2", "", fileStep("/etc/myapp/config", "ok new\n", 0o644),
		serviceStep("myapp.service", restart, time.Second), checkStep("exit 3", "", time.Second)), "")
	wantPhase(t, u, failed)
	if got := readText(t, conf); got != "ok old\n" {
		t.Fatalf("config %q, want the old one back", got)
	}
	wantActions(t, s, "restart -- myapp.service", "restart -- myapp.service")
	calls, _ := s.Calls()
	// The undo waits for the restarted unit (the order of file restore
	// and restart is shown by TestServiceNeverActiveUndoes).
	if len(calls) == 0 || calls[len(calls)-1] != "is-active -- myapp.service" {
		t.Errorf("calls %q: the undo should wait for the unit after restarting it", calls)
	}
}

func TestServiceReload(t *testing.T) {
	e := newEnv(t)
	conf := e.path("/etc/nginx/site.conf")
	s := stubSystemctl(t, conf)
	must(t, s.SetActive("active"))
	p := pkg("site", "1", "", fileStep("/etc/nginx/site.conf", "ok\n", 0o644), serviceStep("nginx.service", reload, time.Second))
	wantPhase(t, e.install(p, ""), succeeded)
	wantActions(t, s, "reload -- nginx.service")

	// Not running: reload cannot work, so the step starts it.
	must(t, s.SetActive("inactive"))
	wantPhase(t, e.install(p, ""), succeeded)
	wantActions(t, s, "reload -- nginx.service", "start -- nginx.service")
}

func TestServiceEnableAndRollback(t *testing.T) {
	e := newEnv(t)
	conf := e.path("/etc/myapp/config")
	s := stubSystemctl(t, conf)
	p := pkg("myapp", "1", "", fileStep("/etc/myapp/config", "ok\n", 0o644), serviceStep("myapp.service", enable, time.Second))
	u := e.install(p, "")
	wantPhase(t, u, succeeded)
	wantActions(t, s, "enable -- myapp.service", "start -- myapp.service")
	wantPhase(t, e.install(p, ""), unchanged)

	// Rolling the first install back removes the file and leaves the
	// unit as it was: stopped and disabled.
	u = e.rollback("myapp")
	wantPhase(t, u, succeeded)
	wantActions(t, s, "enable -- myapp.service", "start -- myapp.service", "disable -- myapp.service", "stop -- myapp.service")
	if _, err := os.Stat(conf); !os.IsNotExist(err) {
		t.Fatalf("config still there after the rollback: %v", err)
	}
}

func TestServiceRollbackRestartsOnThePreviousVersion(t *testing.T) {
	e := newEnv(t)
	conf := e.path("/etc/myapp/config")
	s := stubSystemctl(t, conf)
	must(t, s.SetActive("active"))
	step := serviceStep("myapp.service", restart, time.Second)
	wantPhase(t, e.install(pkg("myapp", "1", "", fileStep("/etc/myapp/config", "ok v1\n", 0o644), step), ""), succeeded)
	wantPhase(t, e.install(pkg("myapp", "2", "", fileStep("/etc/myapp/config", "ok v2\n", 0o644), step), ""), succeeded)
	// v2 must not be what the unit restarts on: watch for v1's text.
	must(t, s.Watch(conf, "v1"))
	u := e.rollback("myapp")
	wantPhase(t, u, succeeded)
	if got := readText(t, conf); got != "ok v1\n" {
		t.Fatalf("config %q after the rollback", got)
	}
	wantActions(t, s, "restart -- myapp.service", "restart -- myapp.service", "restart -- myapp.service")
	if s.Active() != "active" {
		t.Fatalf("unit %s after the rollback: it was restarted before the file was restored", s.Active())
	}
}

func TestServicePlanChangesNothing(t *testing.T) {
	e := newEnv(t)
	s := stubSystemctl(t, e.path("/etc/myapp/config"))
	must(t, s.SetActive("active"))
	u := e.plan(pkg("myapp", "1", "", fileStep("/etc/myapp/config", "ok\n", 0o644), serviceStep("myapp.service", restart, 0)), "")
	wantPhase(t, u, succeeded)
	if d := u.GetSteps()[1].GetDetail(); d != "would run systemctl restart myapp.service (an earlier step changed the node)" {
		t.Errorf("plan detail %q", d)
	}
	wantActions(t, s)
}

// TestServiceUnitRefused: the agent checks unit names itself (a package
// reaches it from the controller, but not every controller is current).
func TestServiceUnitRefused(t *testing.T) {
	e := newEnv(t)
	s := stubSystemctl(t, e.path("/etc/x"))
	for _, unit := range []string{"--now", "-H.service", "a;reboot.service", "../x.service", "x y.service", "myapp"} {
		u := e.install(pkg("x", "1", "", fileStep("/etc/x", "ok", 0o644), serviceStep(unit, restart, time.Second)), "")
		wantPhase(t, u, failed)
		if !strings.Contains(u.GetMessage(), "step 2 (service restart "+unit+")") {
			t.Errorf("unit %q: message %q", unit, u.GetMessage())
		}
	}
	if _, err := os.Stat(e.path("/etc/x")); !os.IsNotExist(err) {
		t.Fatal("a refused job wrote its file")
	}
	calls, _ := s.Calls()
	if len(calls) != 0 {
		t.Fatalf("systemctl ran for a refused unit: %q", calls)
	}
}

func TestServiceWithoutSystemctl(t *testing.T) {
	e := newEnv(t)
	t.Setenv("PATH", t.TempDir())
	u := e.install(pkg("x", "1", "", fileStep("/etc/x", "ok", 0o644), serviceStep("x.service", restart, time.Second)), "")
	wantPhase(t, u, failed)
	if !strings.Contains(u.GetMessage(), "systemctl is not in the agent's PATH") {
		t.Fatalf("message %q", u.GetMessage())
	}
}

// TestServiceUndoneAfterACrash: the agent dies after the unit was
// restarted on the new config; the next start puts the config back, then
// restarts the unit on it.
func TestServiceUndoneAfterACrash(t *testing.T) {
	e := newEnv(t)
	conf := e.path("/etc/myapp/config")
	s := stubSystemctl(t, conf)
	must(t, s.SetActive("active"))
	step := serviceStep("myapp.service", restart, time.Second)
	wantPhase(t, e.install(pkg("myapp", "1", "", fileStep("/etc/myapp/config", "ok v1\n", 0o644), step), ""), succeeded)

	e.inst.hook = func(p string) {
		if p == "commit" {
			runtime.Goexit()
		}
	}
	crashed := make(chan struct{})
	go func() {
		defer close(crashed)
		e.inst.Install(context.Background(), Request{JobID: "crash", Package: pkg("myapp", "2", "", fileStep("/etc/myapp/config", "ok v2\n", 0o644), step)}, nil, nil)
	}()
	<-crashed
	wantActions(t, s, "restart -- myapp.service", "restart -- myapp.service")
	// Only v1 lets the unit come up now: the restart must follow the restore.
	must(t, s.Watch(conf, "v1"))

	i2 := e.open()
	if got := i2.Interrupted(); len(got) != 1 || got[0].GetPhase() != failed {
		t.Fatalf("Interrupted() = %v", got)
	}
	if got := readText(t, conf); got != "ok v1\n" {
		t.Fatalf("config %q after the restart, want v1 back", got)
	}
	wantActions(t, s, "restart -- myapp.service", "restart -- myapp.service", "restart -- myapp.service")
	if s.Active() != "active" {
		t.Fatalf("unit %s after the recovery", s.Active())
	}
}
