// Package sha256digest reads and writes Ferry's content addresses:
// "sha256:" and 64 lowercase hex digits, the form artifact records,
// download requests and the agent's cache use.
package sha256digest

import (
	"encoding/hex"
	"fmt"
	"strings"
)

// Prefix starts every digest.
const Prefix = "sha256:"

// Format returns the digest of a SHA-256 sum.
func Format(sum []byte) string { return Prefix + hex.EncodeToString(sum) }

// Short is a digest cut to "sha256:" and its first 12 hex digits, for
// messages and tables; anything shorter is returned as it is.
func Short(d string) string {
	if len(d) > len(Prefix)+12 {
		return d[:len(Prefix)+12]
	}
	return d
}

// Parse checks a digest in its canonical form, "sha256:" and 64 lowercase
// hex digits, and returns the hex.
func Parse(d string) (string, error) {
	h, ok := strings.CutPrefix(d, Prefix)
	switch {
	case !ok:
		return "", fmt.Errorf("digest %q must start with %q; want %s<64 lowercase hex digits>", d, Prefix, Prefix)
	case strings.Trim(h, "0123456789abcdef") != "":
		return "", fmt.Errorf("digest %q has characters other than 0-9 and a-f after %q; want %s<64 lowercase hex digits>", d, Prefix, Prefix)
	case len(h) != 64:
		return "", fmt.Errorf("digest %q has %d hex digits after %q; want 64 hex digits", d, len(h), Prefix)
	}
	return h, nil
}

// ParseHex reads a SHA-256 a person typed or pasted: 64 hex digits in
// either case, with or without "sha256:", surrounding space ignored. It
// returns lowercase hex.
func ParseHex(s string) (string, error) {
	h := strings.ToLower(strings.TrimPrefix(strings.TrimSpace(s), Prefix))
	if len(h) != 64 {
		return "", fmt.Errorf("sha256 %q must be 64 hex digits", s)
	}
	if _, err := hex.DecodeString(h); err != nil {
		return "", fmt.Errorf("sha256 %q is not hex", s)
	}
	return h, nil
}
