package identity

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrydeploy/ferry/shared/pki"
)

const (
	day     = 24 * time.Hour
	certTTL = 30 * day
)

// issued is when the controller signs the test certificates, by its clock.
var issued = time.Date(2031, 3, 14, 9, 0, 0, 0, time.UTC)

// skewedIdentity is a node enrolled at issued (controller clock) whose
// certificate file was written at receivedAt by the node's own clock.
func skewedIdentity(t *testing.T, receivedAt time.Time) *Identity {
	t.Helper()
	ca, err := pki.NewCA(issued)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := pki.NewKey()
	cert, err := ca.Sign(pki.SignRequest{Identity: pki.Identity{Role: pki.RoleAgent, Name: "n1"}, PublicKey: key.Public(), TTL: certTTL, Now: issued})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := Save(dir, Info{NodeID: "n1", Group: "web"}, key, cert, ca.Cert); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(filepath.Join(dir, certFile), receivedAt, receivedAt); err != nil {
		t.Fatal(err)
	}
	id, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// The start check trusts a clock that agrees with the certificate, falls
// back on the skew the certificate arrived with when it does not, and
// otherwise says what is wrong: the clock (fix it, re-enrolling would not
// help) or the certificate (re-enroll, unless the clock is wrong).
func TestCheckClock(t *testing.T) {
	for _, tc := range []struct {
		name          string
		received, now time.Time
		skew          time.Duration
		errHas        []string
		errHasNot     []string
	}{
		{name: "clock right", received: issued, now: issued.Add(day)},
		{name: "30 days ahead since enrollment", received: issued.Add(30 * day), now: issued.Add(30*day + time.Hour), skew: -30 * day},
		{name: "40 days ahead since enrollment", received: issued.Add(40 * day), now: issued.Add(41 * day), skew: -40 * day},
		{name: "10 days behind since enrollment", received: issued.Add(-10 * day), now: issued.Add(-10*day + time.Hour), skew: 10 * day},
		{
			name: "clock went back a year after enrollment", received: issued, now: issued.Add(-365 * day),
			errHas:    []string{"this node's clock is wrong", "at least 365 days behind", "2031-03-14T09:00:00Z", "NTP", "re-enrolling would not help"},
			errHasNot: []string{"ferryctl token create"},
		},
		{
			name: "expired", received: issued, now: issued.Add(certTTL + 2*day),
			errHas: []string{"expired at 2031-04-13T09:00:00Z", "offline past its renewal window", "ferryctl token create --group web"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := skewedIdentity(t, tc.received)
			err := id.CheckClock(tc.now)
			if len(tc.errHas) == 0 {
				if err != nil {
					t.Fatalf("CheckClock: %v", err)
				}
				if got := id.Skew(tc.now); got != tc.skew {
					t.Errorf("Skew = %v, want %v", got, tc.skew)
				}
				return
			}
			if err == nil {
				t.Fatal("CheckClock accepted the certificate")
			}
			for _, s := range tc.errHas {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not say %q", err, s)
				}
			}
			for _, s := range tc.errHasNot {
				if strings.Contains(err.Error(), s) {
					t.Errorf("error %q says %q", err, s)
				}
			}
		})
	}
}

// Renewal and expiry follow the controller's clock, whichever way the
// node's clock is off.
func TestRenewalByControllerClock(t *testing.T) {
	renewAt := issued.Add(certTTL * 2 / 3) // by the controller's clock
	t.Run("30 days ahead, estimated at start", func(t *testing.T) {
		local := issued.Add(30*day + time.Hour)
		id := skewedIdentity(t, issued.Add(30*day))
		if err := id.CheckClock(local); err != nil {
			t.Fatalf("the agent refuses to start: %v", err)
		}
		if got := id.RenewAt(); !got.Equal(renewAt) {
			t.Errorf("RenewAt = %v, want %v (two thirds into the lifetime)", got, renewAt)
		}
		due := local.Add(id.RenewIn(local))
		if want := renewAt.Add(30 * day); !due.Equal(want) {
			t.Errorf("renewal due at %v by the node's clock, want %v (%v by the controller's)", due, want, renewAt)
		}
		if err := id.CheckExpiry(due); err != nil {
			t.Errorf("at renewal time: %v", err)
		}
	})
	t.Run("10 days behind, measured", func(t *testing.T) {
		id := skewedIdentity(t, issued)
		local := issued.Add(-10*day + time.Hour)
		id.SetSkew(10*day, local)
		due := local.Add(id.RenewIn(local))
		controllerAtDue := due.Add(10 * day)
		if !controllerAtDue.Equal(renewAt) {
			t.Errorf("renewal due at %v by the controller's clock, want %v", controllerAtDue, renewAt)
		}
		notAfter := id.Certificate().Leaf.NotAfter
		if !controllerAtDue.Before(notAfter) {
			t.Errorf("renewal at %v by the controller's clock, after the certificate expires (%v)", controllerAtDue, notAfter)
		}
		// The node's clock still says the certificate is valid when the
		// controller sees it expired: the controller's clock decides.
		err := id.CheckExpiry(notAfter.Add(-10*day + time.Second))
		if err == nil || !strings.Contains(err.Error(), "expired at 2031-04-13T09:00:00Z") {
			t.Errorf("CheckExpiry just past expiry by the controller's clock = %v", err)
		}
	})
}

// A clock stepped back while the agent runs (the operator fixed it) moves
// the skew by the step; a step forward, which a suspended host also shows,
// leaves it for the next welcome to measure.
func TestSkewSince(t *testing.T) {
	for _, tc := range []struct {
		name             string
		skew, step, want time.Duration
	}{
		{"no step", -30 * day, 0, -30 * day},
		{"30 days ahead, stepped back by NTP", -30 * day, -30 * day, 0},
		{"stepped back half a second", 2 * time.Second, -500 * time.Millisecond, 2500 * time.Millisecond},
		{"stepped forward or suspended", 10 * day, 10 * day, 10 * day},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := skewSince(tc.skew, tc.step); got != tc.want {
				t.Errorf("skewSince(%v, %v) = %v, want %v", tc.skew, tc.step, got, tc.want)
			}
		})
	}
	// Readings of time.Now carry the monotonic clock, which steps never
	// move; times without it (a test's clock) show no step.
	now := time.Now()
	if got := ClockStep(now, now.Add(time.Hour)); got != 0 {
		t.Errorf("ClockStep over an hour of an unstepped clock = %v, want 0", got)
	}
	if got := ClockStep(issued, issued.Add(time.Hour)); got != 0 {
		t.Errorf("ClockStep without monotonic readings = %v, want 0", got)
	}
}
