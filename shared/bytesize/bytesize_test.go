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

func TestParse(t *testing.T) {
	for _, c := range []struct {
		in   string
		want uint64
		bad  bool
	}{
		{in: "256KiB", want: 256 << 10},
		{in: "1 GiB", want: 1 << 30},
		{in: "500MB", want: 500e6},
		{in: "4096", want: 4096},
		{in: "12B", want: 12},
		{in: "1.5GiB", bad: true},
		{in: "lots", bad: true},
		{in: "-1KiB", bad: true},
		{in: "99999999999TiB", bad: true},
	} {
		got, err := Parse(c.in)
		if c.bad != (err != nil) || got != c.want {
			t.Errorf("Parse(%q) = %d, %v; want %d (error: %v)", c.in, got, err, c.want, c.bad)
		}
	}
}
