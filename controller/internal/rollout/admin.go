// Admin verbs on a rollout that exists: promote, pause, resume, abort.

package rollout

import (
	"fmt"
	"time"

	"github.com/ferrydeploy/ferry/controller/internal/rolloutstate"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/enumword"
)

// Promote lets a rollout waiting after its canaries start wave 1.
func (e *Engine) Promote(actor, id string) (*ferryv1.Rollout, error) {
	return e.admin(actor, "rollout.promote", id, func(ru *run, now time.Time, _ *effects) error {
		if ru.r.GetState() != stWaiting {
			return fmt.Errorf("rollout %s: %w: it is %s, not waiting for promotion", id, ErrState, enumword.Of(ru.r.GetState()))
		}
		ru.promoted = true
		ru.setState(now, stRunning, "promoted by "+actor)
		return nil
	})
}

// Pause stops a rollout from starting jobs; jobs in flight finish. Pausing a
// paused rollout is a no-op.
func (e *Engine) Pause(actor, id string) (*ferryv1.Rollout, error) {
	return e.admin(actor, "rollout.pause", id, func(ru *run, now time.Time, _ *effects) error {
		switch ru.r.GetState() {
		case stPaused:
			return nil
		case stRunning, stWaiting:
			ru.setState(now, stPaused, fmt.Sprintf("paused by %s; `ferryctl rollout resume %s` goes on", actor, id))
			return nil
		}
		return fmt.Errorf("rollout %s: %w: it is %s and cannot be paused", id, ErrState, enumword.Of(ru.r.GetState()))
	})
}

// Resume continues a paused rollout. A rollout paused by its failure
// threshold goes on; the next failure past the limit pauses it again. A
// rollout whose canaries finished while paused goes to WAITING_PROMOTION.
func (e *Engine) Resume(actor, id string) (*ferryv1.Rollout, error) {
	return e.admin(actor, "rollout.resume", id, func(ru *run, now time.Time, _ *effects) error {
		switch ru.r.GetState() {
		case stRunning:
			return nil
		case stPaused:
			ru.setState(now, stRunning, "resumed by "+actor)
			return nil
		case stWaiting:
			return fmt.Errorf("rollout %s: %w: it is waiting for promotion; use `ferryctl rollout promote %s`", id, ErrState, id)
		}
		return fmt.Errorf("rollout %s: %w: it is %s and cannot be resumed", id, ErrState, enumword.Of(ru.r.GetState()))
	})
}

// Abort stops a rollout: nodes not started are SKIPPED, jobs in flight are
// cancelled (their outcomes are still recorded when the agents report).
func (e *Engine) Abort(actor, id string) (*ferryv1.Rollout, error) {
	return e.admin(actor, "rollout.abort", id, func(ru *run, now time.Time, fx *effects) error {
		if rolloutstate.Terminal(ru.r.GetState()) {
			return fmt.Errorf("rollout %s: %w: it already ended %s", id, ErrState, enumword.Of(ru.r.GetState()))
		}
		e.abort(ru, now, fx, "aborted by "+actor)
		return nil
	})
}

// admin runs fn, an admin action on rollout id, and commits what it
// changed with the action's audit entry (commitAction): if the two cannot
// be saved together, the action fails and changes nothing.
func (e *Engine) admin(actor, action, id string, fn func(ru *run, now time.Time, fx *effects) error) (*ferryv1.Rollout, error) {
	if err := e.adminLeading(); err != nil {
		return nil, err
	}
	ev := e.auditEntry(actor, action, id, "")
	e.mu.Lock()
	ru, ok := e.runs[id]
	var err error
	switch {
	case !ok:
		err = notFound(id)
	case ru.frozen:
		err = fmt.Errorf("rollout %s: %w: its stored record cannot be read by this controller", id, ErrState)
	}
	if err != nil {
		e.mu.Unlock()
		e.refused(ev, err)
		return nil, err
	}
	now := e.cfg.Clock.Now()
	fx := &e.queue
	before := checkpointOf(ru, fx)
	if err := fn(ru, now, fx); err != nil {
		e.mu.Unlock()
		e.drain()
		e.refused(ev, err)
		return nil, err
	}
	e.settle(ru, now, fx)
	err = e.commitAction(ru, now, fx, ev, before)
	e.mu.Unlock()
	e.drain()
	if err != nil {
		return nil, err
	}
	e.log.Info("rollout admin action", "rollout", id, "action", action, "by", actor)
	return e.Get(id)
}
