package server

import (
	"strings"
	"testing"
)

func TestRandomString(t *testing.T) {
	counts := map[rune]int{}
	for i := 0; i < 2000; i++ {
		s, err := randomString(tokenSecretLen)
		if err != nil {
			t.Fatal(err)
		}
		if len(s) != tokenSecretLen {
			t.Fatalf("length %d", len(s))
		}
		for _, c := range s {
			if !strings.ContainsRune(tokenAlphabet, c) {
				t.Fatalf("character %q outside the alphabet", c)
			}
			counts[c]++
		}
	}
	// 32,000 draws over 36 symbols: each about 889; a broken generator
	// (a stuck or missing symbol) falls far outside this band.
	for _, c := range tokenAlphabet {
		if n := counts[c]; n < 700 || n > 1100 {
			t.Errorf("symbol %q drawn %d times, want about 889", c, n)
		}
	}
}

func TestSplitToken(t *testing.T) {
	for _, bad := range []string{"", "abc", "abcdef", "abcdef.short", "abcdefg.0123456789abcdef", "abcdef0123456789abcdef"} {
		if _, _, err := splitToken(bad); err == nil {
			t.Errorf("splitToken(%q) accepted", bad)
		}
	}
	if id, secret, err := splitToken(" abcdef.0123456789abcdef\n"); err != nil || id != "abcdef" || secret != "0123456789abcdef" {
		t.Errorf("splitToken: %q %q %v", id, secret, err)
	}
}
