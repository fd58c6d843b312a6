package scale

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferrydeploy/ferry/agent/internal/enroll"
	"github.com/ferrydeploy/ferry/agent/internal/identity"
)

// Enrollment says where and how simulated nodes enroll.
type Enrollment struct {
	Controller string // host:port
	Token      string // a join token good for every node
	CAPin      string // sha256:HEX
	Dir        string // one state dir per node is created under it
	Parallel   int    // enrollments in flight (default 8)
}

// Enrolled is the outcome of enrolling a fleet.
type Enrolled struct {
	Certs []*tls.Certificate // in the order of the IDs
	CA    *x509.CertPool
}

// Enroll enrolls every node of ids with the real agent's enrollment code
// (key generated locally, CSR, token, pinned CA, identity saved in a state
// dir), a few at a time.
func Enroll(ctx context.Context, e Enrollment, ids []string) (*Enrolled, error) {
	if e.Parallel <= 0 {
		e.Parallel = 8
	}
	out := &Enrolled{Certs: make([]*tls.Certificate, len(ids))}
	var (
		next   atomic.Int64
		mu     sync.Mutex
		first  error
		caOnce sync.Once
		wg     sync.WaitGroup
	)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for range e.Parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(ids) || ctx.Err() != nil {
					return
				}
				dir := filepath.Join(e.Dir, ids[i])
				_, err := enroll.Enroll(ctx, enroll.Options{Controllers: []string{e.Controller}, Token: e.Token, CAPin: e.CAPin, NodeID: ids[i], StateDir: dir})
				var id *identity.Identity
				if err == nil {
					id, err = identity.Load(dir)
				}
				if err != nil {
					mu.Lock()
					if first == nil {
						first = fmt.Errorf("enroll simulated node %s: %w", ids[i], err)
					}
					mu.Unlock()
					cancel()
					return
				}
				out.Certs[i] = id.Certificate()
				caOnce.Do(func() { out.CA = id.Pool() })
			}
		}()
	}
	wg.Wait()
	if first != nil {
		return nil, first
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("enroll simulated nodes: %w", err)
	}
	return out, nil
}

// Fleet is a set of simulated agents running together.
type Fleet struct {
	Agents []*Agent
	byID   map[string]*Agent

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// NewFleet returns simulated agents for ids with their certificates.
func NewFleet(cfg AgentConfig, ids []string, certs []*tls.Certificate) (*Fleet, error) {
	if len(ids) != len(certs) {
		return nil, fmt.Errorf("fleet: %d node IDs but %d certificates", len(ids), len(certs))
	}
	if (cfg.Controller == "" && len(cfg.Controllers) == 0) || cfg.CA == nil {
		return nil, errors.New("fleet: AgentConfig needs the controller address and the CA")
	}
	cfg.defaults()
	f := &Fleet{byID: make(map[string]*Agent, len(ids))}
	for i, id := range ids {
		a := NewAgent(&cfg, id, certs[i], uint64(i)+1)
		a.first = i
		f.Agents = append(f.Agents, a)
		f.byID[id] = a
	}
	return f, nil
}

// Agent returns the simulated agent of a node.
func (f *Fleet) Agent(id string) (*Agent, bool) {
	a, ok := f.byID[id]
	return a, ok
}

// Start runs every agent, their starts spread evenly over spread (so
// heartbeats are spread as in a fleet that has been up a while).
func (f *Fleet) Start(ctx context.Context, spread time.Duration) {
	ctx, f.cancel = context.WithCancel(ctx)
	n := len(f.Agents)
	begin := time.Now()
	f.wg.Add(n)
	go func() {
		for i, a := range f.Agents {
			if d := time.Until(begin.Add(spread * time.Duration(i) / time.Duration(n))); d > 0 {
				select {
				case <-ctx.Done():
				case <-time.After(d):
				}
			}
			go func() {
				defer f.wg.Done()
				_ = a.Run(ctx)
			}()
		}
	}()
}

// Stop ends every agent (each closes its stream gracefully) and waits.
func (f *Fleet) Stop() {
	if f.cancel != nil {
		f.cancel()
	}
	f.wg.Wait()
}

// ConnectedSince counts agents whose latest welcome came after t.
func (f *Fleet) ConnectedSince(t time.Time) int {
	n := 0
	for _, a := range f.Agents {
		if a.LastWelcome().After(t) {
			n++
		}
	}
	return n
}

// JobTotals sums the jobs the agents were sent and the updates they sent.
func (f *Fleet) JobTotals() (jobs, updates int64) {
	for _, a := range f.Agents {
		jobs += a.Jobs()
		updates += a.JobUpdates()
	}
	return jobs, updates
}

// Totals sums the agents' counters.
func (f *Fleet) Totals() (sessions, failures, heartbeats int64) {
	for _, a := range f.Agents {
		sessions += a.Sessions()
		failures += a.Failures()
		heartbeats += a.Heartbeats()
	}
	return sessions, failures, heartbeats
}

// WaitConnected waits until every agent's latest welcome came after t and
// returns the latest of those welcomes. On timeout it says how many are
// missing and why the first of them last failed.
func (f *Fleet) WaitConnected(ctx context.Context, t time.Time, timeout time.Duration) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	for {
		var last time.Time
		var missing []*Agent
		for _, a := range f.Agents {
			w := a.LastWelcome()
			if !w.After(t) {
				missing = append(missing, a)
			} else if w.After(last) {
				last = w
			}
		}
		if len(missing) == 0 {
			return last, nil
		}
		if time.Now().After(deadline) {
			return last, fmt.Errorf("%d of %d simulated agents not connected after %v; e.g. %s: %q", len(missing), len(f.Agents), timeout, missing[0].ID, missing[0].LastError())
		}
		select {
		case <-ctx.Done():
			return last, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
