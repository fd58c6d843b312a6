package chunk

import "testing"

func TestSize(t *testing.T) {
	for _, tc := range []struct {
		asked uint32
		want  int
	}{
		{0, Max},       // an old agent sends nothing: 1 MiB as before
		{1, Min},       // below the floor
		{Min - 1, Min}, //
		{Min, Min},
		{200 << 10, 200 << 10},
		{Max, Max},
		{Max + 1, Max}, // above the ceiling
		{1 << 31, Max},
	} {
		if got := Size(tc.asked); got != tc.want {
			t.Errorf("Size(%d) = %d, want %d", tc.asked, got, tc.want)
		}
	}
}
