package pushclient

import (
	"strings"
	"testing"
)

// FuzzParseChecksumFile: any input either fails or yields 64 lowercase hex
// digits that appear in it; InferMeta never panics and keeps the base name.
func FuzzParseChecksumFile(f *testing.F) {
	hexA := strings.Repeat("ab", 32)
	for _, seed := range []string{
		hexA + "\n",
		hexA + "  go1.20.3.linux-amd64.tar.gz\n",
		hexA + " *app\n" + strings.Repeat("0", 64) + "  other\n",
		"SHA256 (app.zip) = " + hexA,
		"# comment\n\n\\" + hexA + "  a\\\\b\n",
	} {
		f.Add([]byte(seed), "go1.20.3.linux-amd64.tar.gz")
	}
	f.Add([]byte(hexA), "/")
	f.Fuzz(func(t *testing.T, data []byte, name string) {
		sum, err := ParseChecksumFile(data, name)
		if err == nil {
			if len(sum) != 64 || strings.Trim(sum, "0123456789abcdef") != "" {
				t.Fatalf("ParseChecksumFile returned %q", sum)
			}
			if !strings.Contains(strings.ToLower(string(data)), sum) {
				t.Fatalf("digest %q is not in the input", sum)
			}
		}
		m := InferMeta(name)
		if strings.ContainsAny(m.Name, "/") {
			t.Fatalf("InferMeta(%q).Name = %q", name, m.Name)
		}
	})
}
