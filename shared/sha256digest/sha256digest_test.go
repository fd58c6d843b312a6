package sha256digest

import (
	"crypto/sha256"
	"strings"
	"testing"
)

const hexsum = "9796b2bd0bd4c6d2bcae1fbaf2ca1c2e2f6e8a0fbc6b1ab4f3c4ad57b0b1e5c1"

func TestFormat(t *testing.T) {
	sum := sha256.Sum256([]byte("go1.20.3"))
	d := Format(sum[:])
	h, err := Parse(d)
	if err != nil || len(h) != 64 || d != Prefix+h {
		t.Fatalf("Format = %q; Parse of it = %q, %v", d, h, err)
	}
}

// Parse takes only the canonical form; ParseHex also what people paste.
func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name      string
		parse     func(string) (string, error)
		in        string
		want, err string
	}{
		{"Parse", Parse, Prefix + hexsum, hexsum, ""},
		{"Parse", Parse, hexsum, "", `must start with "sha256:"; want sha256:<64 lowercase hex digits>`},
		{"Parse", Parse, "md5:abc", "", "must start with"},
		{"Parse", Parse, "sha256:abc", "", `has 3 hex digits after "sha256:"; want 64 hex digits`},
		{"Parse", Parse, "sha256:", "", "has 0 hex digits"},
		{"Parse", Parse, "sha256:XYZ", "", `has characters other than 0-9 and a-f after "sha256:"; want sha256:<64 lowercase hex digits>`},
		{"Parse", Parse, Prefix + strings.ToUpper(hexsum), "", "64 lowercase hex digits"},
		{"Parse", Parse, " " + Prefix + hexsum, "", "must start with"},
		{"Parse", Parse, Prefix + hexsum + "0", "", "has 65 hex digits"},
		{"ParseHex", ParseHex, hexsum, hexsum, ""},
		{"ParseHex", ParseHex, Prefix + hexsum, hexsum, ""},
		{"ParseHex", ParseHex, "  " + strings.ToUpper(hexsum) + "\n", hexsum, ""},
		{"ParseHex", ParseHex, "xyz", "", "must be 64 hex digits"},
		{"ParseHex", ParseHex, strings.Repeat("g", 64), "", "is not hex"},
		{"ParseHex", ParseHex, "md5:" + hexsum, "", "must be 64 hex digits"},
	} {
		t.Run(tc.name+"/"+tc.in, func(t *testing.T) {
			got, err := tc.parse(tc.in)
			if tc.err == "" {
				if err != nil || got != tc.want {
					t.Fatalf("%s(%q) = %q, %v; want %q", tc.name, tc.in, got, err, tc.want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("%s(%q) = %q, %v; want an error containing %q", tc.name, tc.in, got, err, tc.err)
			}
		})
	}
}
