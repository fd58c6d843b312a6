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

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in, want, err string
	}{
		{in: Prefix + hexsum, want: hexsum},
		{in: hexsum, err: `must start with "sha256:"; want sha256:<64 lowercase hex digits>`},
		{in: "md5:abc", err: "must start with"},
		{in: "sha256:abc", err: `has 3 hex digits after "sha256:"; want 64 hex digits`},
		{in: "sha256:", err: "has 0 hex digits"},
		{in: "sha256:XYZ", err: `has characters other than 0-9 and a-f after "sha256:"; want sha256:<64 lowercase hex digits>`},
		{in: Prefix + strings.ToUpper(hexsum), err: "64 lowercase hex digits"},
		{in: " " + Prefix + hexsum, err: "must start with"},
		{in: Prefix + hexsum + "0", err: "has 65 hex digits"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := Parse(tc.in)
			if tc.err == "" {
				if err != nil || got != tc.want {
					t.Fatalf("Parse = %q, %v; want %q", got, err, tc.want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("Parse = %q, %v; want an error containing %q", got, err, tc.err)
			}
		})
	}
}

func TestParseHex(t *testing.T) {
	for _, tc := range []struct {
		in, want, err string
	}{
		{in: hexsum, want: hexsum},
		{in: Prefix + hexsum, want: hexsum},
		{in: "  " + strings.ToUpper(hexsum) + "\n", want: hexsum},
		{in: "xyz", err: "must be 64 hex digits"},
		{in: strings.Repeat("g", 64), err: "is not hex"},
		{in: "md5:" + hexsum, err: "must be 64 hex digits"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseHex(tc.in)
			if tc.err == "" {
				if err != nil || got != tc.want {
					t.Fatalf("ParseHex = %q, %v; want %q", got, err, tc.want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("ParseHex = %q, %v; want an error containing %q", got, err, tc.err)
			}
		})
	}
}
