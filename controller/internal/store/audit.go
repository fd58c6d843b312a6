package store

import (
	"encoding/binary"
	"errors"
	"fmt"

	"google.golang.org/protobuf/proto"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// The audit log: one entry per admin action, with its actor and outcome.
//
// Every method that makes an admin action's change takes the action's
// audit entry and writes it in the transaction that makes the change
// (audited), so an action whose entry cannot be written fails and changes
// nothing. A nil entry writes none: for tests, and for changes no admin
// makes (a certificate renewal, a rollout's own transitions). Refusals and
// actions that change nothing are recorded with AppendAudit alone.
//
// A new audited method looks like this:
//
//	func (s *Store) SetThing(id string, v Thing, ev *ferryv1.AuditEvent) error {
//		return s.audited(ev, func(tx kvTx) error {
//			return put(tx.Bucket(bucketThings), "thing", id, v)
//		})
//	}

var bucketAudit = []byte("audit")

// ErrAudit is matched (errors.Is) by the error of an action whose audit
// entry could not be written: the action changed nothing.
var ErrAudit = errors.New("could not record the audit entry")

// auditError says that the entry, and so the change with it, was not
// written.
type auditError struct{ err error }

func (e auditError) Error() string {
	return fmt.Sprintf("%v: %v; nothing was changed", ErrAudit, e.err)
}

func (e auditError) Is(target error) bool { return target == ErrAudit }
func (e auditError) Unwrap() error        { return e.err }

// errNoChange is returned by an audited change that found nothing to do
// (the version exists, packages still use the artifact): nothing is
// written, not the entry either, and the method returns no error; the
// caller records that outcome itself.
var errNoChange = errors.New("no change")

// audited runs change and writes ev in one read-write transaction: both
// or neither. A failure to write ev or to commit is an auditError; an
// error of change itself (a refusal) is returned as it is.
func (s *Store) audited(ev *ferryv1.AuditEvent, change func(tx kvTx) error) error {
	changed := false
	err := s.kv.Update(func(tx kvTx) error {
		changed = false // a run again (etcd) starts over
		if err := change(tx); err != nil {
			return err
		}
		changed = true
		if ev == nil {
			return nil
		}
		if err := s.injectedFault(); err != nil {
			return err
		}
		return appendAudit(tx, ev)
	})
	switch {
	case errors.Is(err, errNoChange):
		return nil
	case err != nil && changed && ev != nil:
		return auditError{err}
	}
	return err
}

// AppendAudit adds an entry to the audit log on its own: a refused action,
// or one that succeeded without changing anything. Its error is an
// auditError.
func (s *Store) AppendAudit(ev *ferryv1.AuditEvent) error {
	err := s.kv.Update(func(tx kvTx) error {
		if err := s.injectedFault(); err != nil {
			return err
		}
		return appendAudit(tx, ev)
	})
	if err != nil {
		return auditError{err}
	}
	return nil
}

// appendAudit adds ev in tx under the next sequence number (the log is
// append-only, in order). Methods call it through audited.
func appendAudit(tx kvTx, ev *ferryv1.AuditEvent) error {
	data, err := proto.Marshal(ev)
	if err != nil {
		return err
	}
	b := tx.Bucket(bucketAudit)
	seq, err := b.NextSequence()
	if err != nil {
		return err
	}
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], seq)
	return b.Put(k[:], data)
}

// FailAuditWrites makes every audit write fail with err until it is
// called with nil. It is the seam for tests of the rule above: an action
// whose entry cannot be written (a full disk) fails and changes nothing.
func (s *Store) FailAuditWrites(err error) {
	if err == nil {
		s.auditFault.Store(nil)
		return
	}
	s.auditFault.Store(&err)
}

func (s *Store) injectedFault() error {
	if p := s.auditFault.Load(); p != nil {
		return *p
	}
	return nil
}

// AuditEvents returns up to limit events, newest first.
func (s *Store) AuditEvents(limit int) ([]*ferryv1.AuditEvent, error) {
	var out []*ferryv1.AuditEvent
	err := s.kv.View(func(tx kvTx) error {
		out = nil // a run again (etcd) starts over
		return tx.Bucket(bucketAudit).ScanReverse(func(_, v []byte) (bool, error) {
			ev := &ferryv1.AuditEvent{}
			if err := proto.Unmarshal(v, ev); err != nil {
				return false, err
			}
			out = append(out, ev)
			return limit <= 0 || len(out) < limit, nil
		})
	})
	return out, err
}
