package tracker

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

const dig = "sha256:0000000000000000000000000000000000000000000000000000000000000001"

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func newTracker(c *clock) *Tracker {
	return New(Config{Now: c.now, SeedWindow: 4, MaxHolders: 3})
}

func seeds(ans []Piece) []int {
	var out []int
	for i, p := range ans {
		if p.Seed {
			out = append(out, i)
		}
	}
	return out
}

// The first askers split the pieces between them, a window each, and no
// piece is assigned twice; asking again keeps one's assignments.
func TestSeedingSpreadsOverAskers(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	tr := newTracker(c)
	a := tr.Ask(dig, "a", 12, nil, true)
	b := tr.Ask(dig, "b", 12, nil, true)
	cc := tr.Ask(dig, "c", 12, nil, true)
	if got := seeds(a); !slices.Equal(got, []int{0, 1, 2, 3}) {
		t.Errorf("a seeds %v, want 0-3", got)
	}
	if got := seeds(b); !slices.Equal(got, []int{4, 5, 6, 7}) {
		t.Errorf("b seeds %v, want 4-7", got)
	}
	if got := seeds(cc); !slices.Equal(got, []int{8, 9, 10, 11}) {
		t.Errorf("c seeds %v, want 8-11", got)
	}
	// b learns that a fetches piece 0: a is named as its holder.
	if !slices.Equal(b[0].Holders, []string{"a"}) {
		t.Errorf("b's holders of piece 0: %v, want [a] (fetching it)", b[0].Holders)
	}
	// A fourth node gets no piece to seed (all are assigned) but every
	// piece's seeder as a holder.
	d := tr.Ask(dig, "d", 12, nil, true)
	if got := seeds(d); len(got) != 0 {
		t.Errorf("d seeds %v, want none: every piece has a seeder", got)
	}
	for i, p := range d {
		if len(p.Holders) != 1 {
			t.Errorf("d's piece %d: holders %v, want its seeder", i, p.Holders)
		}
	}
	if again := tr.Ask(dig, "a", 12, nil, true); !slices.Equal(seeds(again), []int{0, 1, 2, 3}) {
		t.Errorf("a asking again seeds %v, want still 0-3", seeds(again))
	}
}

// A node that holds pieces is named as their holder to others, never to
// itself, and gets the next window when it finished its pieces.
func TestHoldersFromHave(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	tr := newTracker(c)
	tr.Ask(dig, "a", 8, nil, true)
	a := tr.Ask(dig, "a", 8, []uint32{0, 1, 2, 3}, true)
	if got := seeds(a); !slices.Equal(got, []int{4, 5, 6, 7}) {
		t.Errorf("a, holding 0-3, seeds %v, want 4-7 next", got)
	}
	for i := range 4 {
		if a[i].Seed || len(a[i].Holders) != 0 {
			t.Errorf("a's own piece %d: %+v, want nothing to do", i, a[i])
		}
	}
	b := tr.Ask(dig, "b", 8, nil, true)
	for i := range 4 {
		if b[i].Seed || !slices.Equal(b[i].Holders, []string{"a"}) {
			t.Errorf("b's piece %d: %+v, want held by a, not seeded", i, b[i])
		}
	}
	// a no longer holds piece 2 (its cache dropped it): not named.
	tr.Ask(dig, "a", 8, []uint32{0, 1, 3}, true)
	if b := tr.Ask(dig, "b", 8, nil, true); len(b[2].Holders) != 0 || !b[2].Seed {
		t.Errorf("piece 2 after a dropped it: %+v, want no holder and b seeding it", b[2])
	}
}

// An assigned node that stops asking loses its pieces after SeedTimeout;
// one that keeps asking keeps them.
func TestSeederExpiry(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	tr := newTracker(c)
	tr.Ask(dig, "a", 4, nil, true)
	c.t = c.t.Add(DefaultSeedTimeout - time.Second)
	if got := seeds(tr.Ask(dig, "b", 4, nil, true)); len(got) != 0 {
		t.Fatalf("b seeds %v while a's assignment is live", got)
	}
	tr.Ask(dig, "a", 4, []uint32{0}, true) // a asks: still fetching 1-3
	c.t = c.t.Add(DefaultSeedTimeout - time.Second)
	if got := seeds(tr.Ask(dig, "b", 4, nil, true)); len(got) != 0 {
		t.Fatalf("b seeds %v although a asked %s ago", got, DefaultSeedTimeout-time.Second)
	}
	c.t = c.t.Add(2 * time.Second)
	b := tr.Ask(dig, "b", 4, nil, true)
	if got := seeds(b); !slices.Equal(got, []int{1, 2, 3}) {
		t.Fatalf("b seeds %v after a went quiet for %s, want 1-3", got, DefaultSeedTimeout+time.Second)
	}
	if !slices.Equal(b[0].Holders, []string{"a"}) {
		t.Errorf("piece 0 a holds: holders %v, want [a]", b[0].Holders)
	}
}

// Forget (stream closed) and Ban (served bad bytes) stop a node being
// named; a banned node's later claims are ignored.
func TestForgetAndBan(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	tr := newTracker(c)
	tr.Ask(dig, "a", 2, []uint32{0, 1}, true)
	tr.Ask(dig, "bad", 2, []uint32{0, 1}, true)
	tr.Forget("a")
	if !tr.Known(dig, "bad") || tr.Known(dig, "a") {
		t.Errorf("known: bad %v, a %v; want true, false", tr.Known(dig, "bad"), tr.Known(dig, "a"))
	}
	tr.Ban(dig, "bad")
	tr.Ask(dig, "bad", 2, []uint32{0, 1}, true)
	x := tr.Ask(dig, "x", 2, nil, true)
	for i, p := range x {
		if slices.Contains(p.Holders, "bad") || slices.Contains(p.Holders, "a") {
			t.Errorf("piece %d holders %v: names a forgotten or banned node", i, p.Holders)
		}
		if !p.Seed {
			t.Errorf("piece %d: x should seed it, nobody else holds it", i)
		}
	}
	if got := seeds(tr.Ask(dig, "bad", 2, nil, true)); len(got) != 0 {
		t.Errorf("the banned node is assigned %v", got)
	}
}

// A node without a piece server fetches from the controller what no peer
// has, and is never named or assigned.
func TestNonServingAsker(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	tr := newTracker(c)
	n := tr.Ask(dig, "quiet", 6, []uint32{5}, false)
	if got := seeds(n); !slices.Equal(got, []int{0, 1, 2, 3, 4}) {
		t.Errorf("quiet seeds %v, want every piece it lacks", got)
	}
	a := tr.Ask(dig, "a", 6, nil, true)
	if got := seeds(a); !slices.Equal(got, []int{0, 1, 2, 3}) {
		t.Errorf("a seeds %v: the non-serving node took assignments", got)
	}
	if len(a[5].Holders) != 0 {
		t.Errorf("piece 5 holders %v: a non-serving node is named", a[5].Holders)
	}
	if tr.Known(dig, "quiet") {
		t.Error("the non-serving node is known as a holder")
	}
}

// Holders per answer are capped, and different askers start at different
// places in the list.
func TestHoldersCappedAndSpread(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	tr := newTracker(c)
	for i := range 10 {
		tr.Ask(dig, fmt.Sprint("h", i), 1, []uint32{0}, true)
	}
	first := map[string]bool{}
	for i := range 20 {
		p := tr.Ask(dig, fmt.Sprint("asker", i), 1, nil, true)[0]
		if len(p.Holders) != 3 || p.Seed {
			t.Fatalf("asker %d: %+v, want 3 holders and no seed", i, p)
		}
		first[p.Holders[0]] = true
	}
	if len(first) < 3 {
		t.Errorf("20 askers were all sent first to %v: the load does not spread", first)
	}
}

// A whole rollout: N nodes asking and fetching until each holds every
// piece. The controller serves each piece exactly once.
func TestRolloutServesEachPieceOnce(t *testing.T) {
	for _, n := range []int{1, 3, 8, 16} {
		t.Run(fmt.Sprint(n, " nodes"), func(t *testing.T) {
			c := &clock{t: time.Unix(1000, 0)}
			tr := New(Config{Now: c.now})
			const pieces = 17
			have := make([][]uint32, n)
			fromController := make([]int, pieces)
			done := 0
			for round := 0; done < n; round++ {
				if round > 100 {
					t.Fatalf("not done after 100 rounds: %v", have)
				}
				done = 0
				for node := range n {
					id := fmt.Sprint("n", node)
					ans := tr.Ask(dig, id, pieces, have[node], true)
					// One piece a round: a seed from the controller, else
					// one a holder already has.
					for i, p := range ans {
						if p.Seed {
							fromController[i]++
							have[node] = append(have[node], uint32(i))
							break
						}
						if held := slices.ContainsFunc(p.Holders, func(h string) bool {
							var k int
							_, _ = fmt.Sscan(h[1:], &k)
							return slices.Contains(have[k], uint32(i))
						}); held {
							have[node] = append(have[node], uint32(i))
							break
						}
					}
					if len(have[node]) == pieces {
						done++
					}
				}
				c.t = c.t.Add(time.Second)
			}
			for i, k := range fromController {
				if k != 1 {
					t.Errorf("piece %d served by the controller %d times, want once", i, k)
				}
			}
		})
	}
}

// BenchmarkAsk is one GetPieces of the largest download (MaxPieces-sized
// piece lists) in a swarm of 100 nodes that each hold half of it.
func BenchmarkAsk(b *testing.B) {
	const pieces, nodes = 4096, 100
	tr := New(Config{})
	half := make([]uint32, 0, pieces/2)
	for i := range pieces / 2 {
		half = append(half, uint32(2*i))
	}
	for n := range nodes {
		tr.Ask(dig, fmt.Sprint("n", n), pieces, half, true)
	}
	b.ReportAllocs()
	for b.Loop() {
		tr.Ask(dig, "n0", pieces, half, true)
	}
}
