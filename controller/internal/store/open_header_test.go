package store

import (
	"encoding/binary"
	"errors"
	"hash/fnv"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A header whose page count times page size overflows 64 bits must not
// wrap round to a size the file has: checkHeader would pass it, and
// bbolt would fault on the pages past the file's end.
func TestCheckHeaderRefusesAnOverflowingPageCount(t *testing.T) {
	data := fullStore(t)
	const pageSize = 4096
	ne := binary.NativeEndian
	for _, off := range []int{0, pageSize} {
		m := data[off+pageHeaderSize:]
		if got := ne.Uint32(m[8:]); got != pageSize {
			t.Fatalf("meta page at %d: page size %d, want %d", off, got, pageSize)
		}
		ne.PutUint64(m[40:], math.MaxUint64/pageSize+1) // times pageSize wraps to 0
		sum := fnv.New64a()
		_, _ = sum.Write(m[:metaChecksumAt])
		ne.PutUint64(m[metaChecksumAt:], sum.Sum64())
	}
	path := filepath.Join(t.TempDir(), "ferry.db")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	err := checkHeader(path, int64(len(data)))
	if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), "truncated") {
		t.Errorf("checkHeader = %v, want ErrDamaged saying the file was truncated", err)
	}
}
