package install

import "testing"

// One change is "the change", not "the 1 changes".
func TestChangesUndone(t *testing.T) {
	for _, tc := range []struct {
		n    int
		want string
	}{
		{1, "the change already applied was undone"},
		{3, "the 3 changes already applied were undone"},
	} {
		if got := changesUndone(tc.n, "already applied"); got != tc.want {
			t.Errorf("changesUndone(%d) = %q, want %q", tc.n, got, tc.want)
		}
	}
}
