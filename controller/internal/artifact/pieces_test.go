package artifact_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/ferrydeploy/ferry/controller/internal/artifact"
)

// Piece digests are computed from the stored blob only when it still
// hashes to its digest: a damaged blob gets none (and a later call, once
// the bytes are back, does); concurrent callers get one answer.
func TestPiecesFromVerifiedBlob(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	data := randomBytes(40, artifact.DefaultPieceSize+100)
	d := sha(data)
	if _, err := h.push("tool.bin", "1", data, d); err != nil {
		t.Fatal(err)
	}
	blob := filepath.Join(h.st.BlobDir(), strings.TrimPrefix(d, "sha256:"))
	bad := append([]byte(nil), data...)
	bad[len(bad)-1] ^= 1
	if err := os.WriteFile(blob, bad, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := h.st.Pieces(context.Background(), d); !errors.Is(err, artifact.ErrDamaged) || !strings.Contains(err.Error(), "ferryctl artifact verify tool.bin@1") {
		t.Fatalf("pieces of a damaged blob: %v, want ErrDamaged naming the fix", err)
	}
	if err := os.WriteFile(blob, data, 0o600); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	got := make([]*artifact.Pieces, 4)
	for i := range got {
		wg.Go(func() {
			p, err := h.st.Pieces(context.Background(), d)
			if err != nil {
				t.Error(err)
			}
			got[i] = p
		})
	}
	wg.Wait()
	p := got[0]
	if p == nil || p.Count() != 2 || p.Digests[0] != sha(data[:artifact.DefaultPieceSize]) || p.Digests[1] != sha(data[artifact.DefaultPieceSize:]) {
		t.Fatalf("pieces %+v, want the two pieces' digests", p)
	}
	for _, q := range got[1:] {
		if q != p {
			t.Error("concurrent callers computed the pieces more than once")
		}
	}
}

// A blob of more than MaxPieces default pieces gets larger pieces.
func TestPieceSizeFor(t *testing.T) {
	for _, tc := range []struct{ size, want uint64 }{
		{1, artifact.DefaultPieceSize},
		{artifact.DefaultPieceSize * artifact.MaxPieces, artifact.DefaultPieceSize},
		{artifact.DefaultPieceSize*artifact.MaxPieces + 1, 2 * artifact.DefaultPieceSize},
		{64 << 30, 16 << 20},
	} {
		if got := artifact.PieceSizeFor(tc.size); got != tc.want {
			t.Errorf("PieceSizeFor(%d) = %d, want %d", tc.size, got, tc.want)
		}
		if n := (tc.size + artifact.PieceSizeFor(tc.size) - 1) / artifact.PieceSizeFor(tc.size); n > artifact.MaxPieces {
			t.Errorf("%d bytes make %d pieces", tc.size, n)
		}
	}
}
