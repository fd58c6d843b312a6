package identity

import (
	"crypto/x509"
	"fmt"
	"time"

	"github.com/ferrydeploy/ferry/shared/approxdur"
	"github.com/ferrydeploy/ferry/shared/pki"
)

// The controller's clock is the one that accepts or refuses the node's
// certificate, so the agent judges the certificate by it: this node's
// clock plus the skew, measured at every welcome and, before the first
// one, estimated from when the certificate arrived. A node whose clock is
// a month ahead then neither refuses to start nor renews late, and one
// whose clock is behind renews before the controller sees the certificate
// expire. When the operator fixes the clock of a running agent (stepping
// it back), the monotonic clock shows by how much, and the skew follows.

// NTPAdvice is how a message tells the operator to fix a node's clock.
const NTPAdvice = "enable NTP, e.g. `timedatectl set-ntp true`"

// Skew is how far the controller's clock is ahead of this node's at now
// (negative when this node's clock is ahead).
func (id *Identity) Skew(now time.Time) time.Duration {
	id.mu.RLock()
	skew, at := id.skew, id.skewAt
	id.mu.RUnlock()
	if at.IsZero() {
		return skew
	}
	return skewSince(skew, ClockStep(at, now))
}

// SetSkew records a skew measured against the controller at at (this
// node's clock, read from time.Now so it carries a monotonic reading).
func (id *Identity) SetSkew(d time.Duration, at time.Time) {
	id.mu.Lock()
	id.skew, id.skewAt = d, at
	id.mu.Unlock()
}

// ControllerTime is the local time t by the controller's clock.
func (id *Identity) ControllerTime(t time.Time) time.Time { return t.Add(id.Skew(t)) }

// ClockStep is how far this node's wall clock moved against its monotonic
// clock from one reading of time.Now to a later one: positive when it was
// stepped forward or the host was suspended, negative when it was stepped
// back, zero for times without monotonic readings.
func ClockStep(from, to time.Time) time.Duration {
	return to.Round(0).Sub(from.Round(0)) - to.Sub(from)
}

// skewSince is a skew after this node's clock stepped by step: a step back
// puts the controller's clock that much further ahead. A step forward is
// left out, since a suspended host looks the same and its skew did not
// change; the agent reconnects to measure again instead.
func skewSince(skew, step time.Duration) time.Duration {
	if step < 0 {
		return skew - step
	}
	return skew
}

// issuedAt is when the controller signed leaf, by its clock: the CA
// backdates NotBefore by pki.Backdate to tolerate small skews.
func issuedAt(leaf *x509.Certificate) time.Time {
	t := leaf.NotBefore.Add(pki.Backdate)
	if t.After(leaf.NotAfter) {
		return leaf.NotBefore
	}
	return t
}

// Lifetime is how long the controller made the certificate valid for,
// from when it issued it.
func (id *Identity) Lifetime() time.Duration {
	leaf := id.Certificate().Leaf
	return leaf.NotAfter.Sub(issuedAt(leaf))
}

// RenewAt is when the certificate is due for renewal, by the controller's
// clock: two thirds into its lifetime.
func (id *Identity) RenewAt() time.Time {
	leaf := id.Certificate().Leaf
	return issuedAt(leaf).Add(id.Lifetime() * 2 / 3)
}

// RenewIn is how long after now (this node's clock) renewal is due;
// negative when it is overdue.
func (id *Identity) RenewIn(now time.Time) time.Duration {
	return id.RenewAt().Sub(id.ControllerTime(now))
}

// CheckClock is the start-time check of the certificate at now (this
// node's clock). When this clock agrees with the certificate it is
// trusted until a welcome measures the skew. When it does not, but did
// agree with it when the certificate arrived (the clock was already off at
// enrollment or renewal), the skew at arrival is assumed, and Skew reports
// it so the caller can warn. Otherwise the certificate cannot be used:
// this node's clock went back since it arrived (fix the clock), or it
// expired (re-enroll).
func (id *Identity) CheckClock(now time.Time) error {
	leaf := id.Certificate().Leaf
	if within(leaf, now) {
		id.SetSkew(0, now)
		return nil
	}
	if atArrival := issuedAt(leaf).Sub(id.ReceivedAt()); within(leaf, now.Add(atArrival)) {
		id.SetSkew(atArrival, now)
		return nil
	}
	if now.Before(leaf.NotBefore) {
		return fmt.Errorf("this node's clock is wrong: it says %s, but the node certificate was issued at %s by the controller's clock, so the clock is at least %s behind; fix the clock (%s) and start the agent again; re-enrolling would not help",
			now.UTC().Format(time.RFC3339), issuedAt(leaf).UTC().Format(time.RFC3339), approxdur.String(issuedAt(leaf).Sub(now)), NTPAdvice)
	}
	return id.expiredError()
}

// CheckExpiry returns an error once the certificate has expired by the
// controller's clock.
func (id *Identity) CheckExpiry(now time.Time) error {
	if id.ControllerTime(now).After(id.Certificate().Leaf.NotAfter) {
		return id.expiredError()
	}
	return nil
}

// expiredError says how to come back from an expired certificate. When
// this node's clock agreed with the certificate on arrival, the likeliest
// cause of its expiry is time that really passed, not a clock jump.
func (id *Identity) expiredError() error {
	leaf := id.Certificate().Leaf
	return fmt.Errorf("the node certificate expired at %s (the node was offline past its renewal window); re-enroll: get a token with `ferryctl token create --group %s`, remove %s and run `ferry-agent enroll` again",
		leaf.NotAfter.UTC().Format(time.RFC3339), id.Info.Group, id.Dir)
}

func within(leaf *x509.Certificate, t time.Time) bool {
	return !t.Before(leaf.NotBefore) && !t.After(leaf.NotAfter)
}
