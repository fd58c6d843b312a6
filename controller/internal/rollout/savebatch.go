// Coalesced saves of job reports: at 5,000 nodes reporting at once, one
// store transaction (and one encoding of the whole rollout) per report is
// what bounds a rollout's speed on etcd. A report that only moves a node
// along (no job to send, nothing to cancel, the rollout not ending) waits
// up to Config.SaveWindow for others, and the rollout is saved once for
// all of them. This is safe because nothing is acknowledged on a job
// report: an agent re-reports its recent job outcomes in its next hello
// (AgentHello.recent_jobs), so a report lost with a crash before the save
// comes back, and a job is still only sent once its ID is stored (a
// report that sends one saves at once, with the reports waiting). Saves
// go through the engine's Store, fenced on leadership as every other.

package rollout

import "time"

// defaultSaveBatch is Config.SaveBatch's default.
const defaultSaveBatch = 256

// saveBatch is the runs with reports not saved yet.
type saveBatch struct {
	runs    map[*run]struct{}
	reports int
	timer   *time.Timer
}

// deferSave leaves ru's save to the coalesced save and reports whether it
// did: false when coalescing is off or this report fills the batch (the
// caller then saves ru, and the others waiting are saved with it). Called
// with e.mu held.
func (e *Engine) deferSave(ru *run) bool {
	if e.cfg.SaveWindow <= 0 {
		return false
	}
	limit := e.cfg.SaveBatch
	if limit <= 0 {
		limit = defaultSaveBatch
	}
	if e.saves.reports+1 >= limit {
		e.flushSaves(e.cfg.Clock.Now())
		return false
	}
	if e.saves.runs == nil {
		e.saves.runs = map[*run]struct{}{}
	}
	e.saves.runs[ru] = struct{}{}
	e.saves.reports++
	if e.saves.timer == nil {
		e.saves.timer = time.AfterFunc(e.cfg.SaveWindow, e.saveWaiting)
	}
	return true
}

// saved takes ru out of the waiting runs: the caller saves it now.
// Called with e.mu held.
func (e *Engine) saved(ru *run) {
	delete(e.saves.runs, ru)
}

// saveWaiting is the window's end: every waiting run is saved.
func (e *Engine) saveWaiting() {
	e.mu.Lock()
	e.flushSaves(e.cfg.Clock.Now())
	e.mu.Unlock()
	e.drain()
}

// flushSaves saves every waiting run (a failed save is logged and
// retried at the next tick, as any other). Called with e.mu held.
func (e *Engine) flushSaves(now time.Time) {
	if e.saves.timer != nil {
		e.saves.timer.Stop()
	}
	runs := e.saves.runs
	e.saves = saveBatch{}
	if e.leading() != nil {
		return // the next leader loads what was stored; the agents re-report
	}
	for ru := range runs {
		_ = e.commit(ru, now, &e.queue)
	}
}
