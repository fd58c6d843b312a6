package bytesize

import "testing"

func TestIEC(t *testing.T) {
	for _, tc := range []struct {
		n    uint64
		want string
	}{
		{0, "0 B"},
		{512, "512 B"},
		{1536, "1.5 KiB"},
		{65 << 20, "65.0 MiB"},
		{12897484, "12.3 MiB"},
		{3 << 40, "3.0 TiB"},
	} {
		if got := IEC(tc.n); got != tc.want {
			t.Errorf("IEC(%d) = %q, want %q", tc.n, got, tc.want)
		}
	}
}
