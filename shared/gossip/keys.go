package gossip

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// A key rotation follows the order Serf and Consul use on memberlist's
// keyring: install the new key everywhere (every member decrypts with it),
// then make it the primary key (the one each member encrypts with), then
// remove the old one. Ferry's controller tells every agent at about the same
// time, so RotateKey takes the two delays instead of three commands: the new
// key is installed at once, becomes primary after switchIn (by then every
// member told has it), and the keys it replaces are removed retireIn after
// that. A member that still has only an old key can talk to the cluster
// until then and not after: that is the bound on how long a revoked key
// works.

// keySchedule is a member's keyring and the pending steps of its rotations.
type keySchedule struct {
	ring *memberlist.Keyring

	mu       sync.Mutex
	next     []byte    // becomes primary at switchAt; nil when none pending
	switchAt time.Time // when next becomes primary
	retire   []retiring
	timer    *time.Timer
	stopped  bool
}

// retiring is a key that is removed from the keyring at a time.
type retiring struct {
	key []byte
	at  time.Time
}

func newKeySchedule(key []byte) (*keySchedule, error) {
	ring, err := memberlist.NewKeyring(nil, key)
	if err != nil {
		return nil, fmt.Errorf("gossip: keyring: %w", err)
	}
	return &keySchedule{ring: ring}, nil
}

// RotateKey installs key at once, makes it the key this member encrypts
// with after switchIn and removes every other key retireIn after that (a
// key already due to go earlier, from an earlier rotation, keeps its time).
// Rotating to the key already current, or already pending, does nothing.
func (m *Member) RotateKey(key []byte, switchIn, retireIn time.Duration) error {
	if err := checkKey(key); err != nil {
		return err
	}
	return m.keys.rotate(key, time.Now(), max(switchIn, 0), max(retireIn, 0))
}

// Keys returns the keys this member decrypts with, the one it encrypts
// with first.
func (m *Member) Keys() [][]byte {
	var out [][]byte
	for _, k := range m.keys.ring.GetKeys() {
		out = append(out, bytes.Clone(k))
	}
	return out
}

func (s *keySchedule) rotate(key []byte, now time.Time, switchIn, retireIn time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return errors.New("gossip: rotate key after shutdown")
	}
	s.applyLocked(now) // finish what was due, so a due switch is not lost
	if bytes.Equal(key, s.targetLocked()) {
		return nil
	}
	if err := s.ring.AddKey(key); err != nil {
		return fmt.Errorf("gossip: install key: %w", err)
	}
	switchAt := now.Add(switchIn)
	retireAt := switchAt.Add(retireIn)
	for _, k := range s.ring.GetKeys() {
		if !bytes.Equal(k, key) {
			s.retireLocked(k, retireAt)
		}
	}
	s.next, s.switchAt = key, switchAt
	s.applyLocked(now)
	return nil
}

// targetLocked is the key this member encrypts with once pending switches
// are done.
func (s *keySchedule) targetLocked() []byte {
	if s.next != nil {
		return s.next
	}
	return s.ring.GetPrimaryKey()
}

// retireLocked schedules key's removal at at, or keeps an earlier time.
func (s *keySchedule) retireLocked(key []byte, at time.Time) {
	for i := range s.retire {
		if bytes.Equal(s.retire[i].key, key) {
			if at.Before(s.retire[i].at) {
				s.retire[i].at = at
			}
			return
		}
	}
	s.retire = append(s.retire, retiring{key: bytes.Clone(key), at: at})
}

// applyLocked does the steps due at now and arms the timer for the next.
func (s *keySchedule) applyLocked(now time.Time) {
	if s.next != nil && !now.Before(s.switchAt) {
		// rotate installed it; UseKey fails only for a key not installed.
		_ = s.ring.UseKey(s.next)
		s.next = nil
	}
	primary := s.ring.GetPrimaryKey()
	kept := s.retire[:0]
	var due time.Time
	for _, r := range s.retire {
		switch {
		case bytes.Equal(r.key, s.next):
			// Rotated back to a retiring key: it stays.
		case bytes.Equal(r.key, primary):
			// Its successor switches later (memberlist refuses to
			// remove the primary key); the switch runs this again.
			kept = append(kept, r)
		case now.Before(r.at):
			kept = append(kept, r)
			due = earliest(due, r.at)
		default:
			_ = s.ring.RemoveKey(r.key)
		}
	}
	s.retire = kept
	if s.next != nil {
		due = earliest(due, s.switchAt)
	}
	if s.timer != nil {
		s.timer.Stop()
		s.timer = nil
	}
	if due.IsZero() {
		return
	}
	s.timer = time.AfterFunc(max(due.Sub(now), 0), func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if !s.stopped {
			s.applyLocked(time.Now())
		}
	})
}

func earliest(a, b time.Time) time.Time {
	if a.IsZero() || b.Before(a) {
		return b
	}
	return a
}

// stop cancels pending steps (Shutdown).
func (s *keySchedule) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopped = true
	if s.timer != nil {
		s.timer.Stop()
	}
}

// checkKey refuses a key memberlist cannot use, naming the fix.
func checkKey(key []byte) error {
	switch len(key) {
	case 16, 24, 32:
		return nil
	case 0:
		return errors.New("gossip: no key; agents receive it at enrollment, the controller generates one with gossip.NewKey")
	}
	return fmt.Errorf("gossip: key is %d bytes; it must be 16, 24 or 32 (gossip.NewKey makes %d)", len(key), KeySize)
}
