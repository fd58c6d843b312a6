package facts

import (
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
)

func TestDisksOneEntryPerFileSystem(t *testing.T) {
	dir := t.TempDir()
	state, root := filepath.Join(dir, "state"), filepath.Join(dir, "root")
	for _, d := range []string{state, root} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	goroot := filepath.Join(root, "usr/local/go") // not there yet: its parent counts
	dests := []string{goroot}
	other := "/dev/shm" // a tmpfs on most Linux hosts
	var a, b syscall.Stat_t
	separate := syscall.Stat(dir, &a) == nil && syscall.Stat(other, &b) == nil && a.Dev != b.Dev
	if separate {
		dests = append(dests, other)
	}
	disks := Disks(state, root, dests)
	want := 1
	if separate {
		want = 2
	}
	if len(disks) != want {
		t.Fatalf("Disks = %v, want %d entries", disks, want)
	}
	d := disks[0]
	if d.Path != state || !slices.Equal(d.Uses, []string{"state dir", "install root", goroot}) {
		t.Errorf("first entry %s holds %q, want %s holding the state dir, the root and %s", d.Path, d.Uses, state, goroot)
	}
	if d.TotalBytes == 0 || d.FreeBytes > d.TotalBytes {
		t.Errorf("first entry: %d of %d bytes free", d.FreeBytes, d.TotalBytes)
	}
	if separate && (disks[1].Path != other || !slices.Equal(disks[1].Uses, []string{other})) {
		t.Errorf("second entry %v, want %s on its own", disks[1], other)
	}
	if free, _, err := Space(state); err != nil || free != DiskFree(state) {
		t.Errorf("Space(%s) free = %d, %v; DiskFree says %d", state, free, err, DiskFree(state))
	}
}
