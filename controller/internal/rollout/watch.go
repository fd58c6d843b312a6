// Watch fan-out: how a rollout's events reach its watchers.

package rollout

import (
	"context"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/enumword"
)

// Watch streams a rollout's events: node outcome changes (failures with the
// failed step), wave 1 starting, state changes. The first event is the
// rollout as it is now. The channel closes when the rollout has ended (after
// its last event) or ctx ends. A consumer that falls behind loses its oldest
// events, never the last one; every event carries the whole rollout. The
// rollouts in events are shared: do not modify them.
func (e *Engine) Watch(ctx context.Context, id string) (<-chan *ferryv1.WatchRolloutResponse, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	ru, ok := e.runs[id]
	if !ok {
		return nil, notFound(id)
	}
	w := &watcher{ch: make(chan *ferryv1.WatchRolloutResponse, watchBuffer)}
	w.send(&ferryv1.WatchRolloutResponse{
		Rollout: proto.Clone(ru.r).(*ferryv1.Rollout),
		Event:   enumword.Of(ru.r.GetState()) + ": " + ru.r.GetMessage(),
		At:      timestamppb.New(e.cfg.Clock.Now()),
	})
	if ru.ended() {
		w.close()
		return w.ch, nil
	}
	if ru.watchers == nil {
		ru.watchers = map[*watcher]struct{}{}
	}
	ru.watchers[w] = struct{}{}
	w.stop = context.AfterFunc(ctx, func() {
		e.mu.Lock()
		defer e.mu.Unlock()
		delete(ru.watchers, w)
		w.close()
	})
	return w.ch, nil
}

const watchBuffer = 256

// watcher is one Watch subscription. Its methods run with e.mu held.
type watcher struct {
	ch     chan *ferryv1.WatchRolloutResponse
	closed bool
	stop   func() bool
}

func (w *watcher) send(ev *ferryv1.WatchRolloutResponse) {
	if w.closed {
		return
	}
	for {
		select {
		case w.ch <- ev:
			return
		default:
		}
		select { // full: drop the oldest event
		case <-w.ch:
		default:
		}
	}
}

func (w *watcher) close() {
	if w.closed {
		return
	}
	w.closed = true
	close(w.ch)
	if w.stop != nil {
		w.stop()
	}
}
