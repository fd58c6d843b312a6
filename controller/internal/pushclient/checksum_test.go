package pushclient

import (
	"strings"
	"testing"
)

func TestParseChecksumFile(t *testing.T) {
	hexA := strings.Repeat("ab", 32)
	hexB := strings.Repeat("cd", 32)
	cases := []struct {
		name, data, file, want, err string
	}{
		{"bare digest (go.dev/dl)", hexA + "\n", "go1.20.3.linux-amd64.tar.gz", hexA, ""},
		{"text mode", hexA + "  go1.20.3.linux-amd64.tar.gz\n", "go1.20.3.linux-amd64.tar.gz", hexA, ""},
		{"binary mode", hexA + " *go1.20.3.linux-amd64.tar.gz\n", "dl/go1.20.3.linux-amd64.tar.gz", hexA, ""},
		{"several files", hexB + "  other.tar.gz\n" + hexA + "  ./sub/app.tar.gz\n", "/tmp/app.tar.gz", hexA, ""},
		{"upper case", strings.ToUpper(hexA) + "  app", "app", hexA, ""},
		{"BSD style", "SHA256 (app.zip) = " + hexA, "app.zip", hexA, ""},
		{"comments and blank lines", "# release 1.0\n\n" + hexA + "  app\n", "app", hexA, ""},
		{"CRLF", hexA + "  app\r\n", "app", hexA, ""},
		{"no line for the file", hexB + "  other.tar.gz\n", "app.tar.gz", "", "no line for app.tar.gz (it lists other.tar.gz)"},
		{"empty", "\n", "app", "", "no SHA-256"},
		{"not a digest", "hello world\n", "app", "", "line 1"},
		{"md5", "d41d8cd98f00b204e9800998ecf8427e  app\n", "app", "", "not sha256sum output"},
		{"two bare digests", hexA + "\n" + hexB + "\n", "app", "", "2 digests without file names"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseChecksumFile([]byte(tc.data), tc.file)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %q, %v; want an error mentioning %q", got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestInferMeta(t *testing.T) {
	cases := []struct {
		file string
		want Meta
	}{
		{"go1.20.3.linux-amd64.tar.gz", Meta{"go1.20.3.linux-amd64.tar.gz", "1.20.3", "linux", "amd64"}},
		{"/dl/go1.21.0.darwin-arm64.tar.gz", Meta{"go1.21.0.darwin-arm64.tar.gz", "1.21.0", "darwin", "arm64"}},
		{"node-v18.16.0-linux-x64.tar.xz", Meta{"node-v18.16.0-linux-x64.tar.xz", "18.16.0", "linux", "amd64"}},
		{"terraform_1.5.7_linux_amd64.zip", Meta{"terraform_1.5.7_linux_amd64.zip", "1.5.7", "linux", "amd64"}},
		{"prometheus-2.45.0.linux-arm64.tar.gz", Meta{"prometheus-2.45.0.linux-arm64.tar.gz", "2.45.0", "linux", "arm64"}},
		{"app-2.0.0-rc.1-linux-aarch64.tgz", Meta{"app-2.0.0-rc.1-linux-aarch64.tgz", "2.0.0-rc.1", "linux", "arm64"}},
		{"myapp-linux-amd64-1.2.3.tar.gz", Meta{"myapp-linux-amd64-1.2.3.tar.gz", "1.2.3", "linux", "amd64"}},
		{"tool_x86_64", Meta{"tool_x86_64", "", "", "amd64"}},
		{"myapp", Meta{"myapp", "", "", ""}},
		{"config-bundle.tar.gz", Meta{"config-bundle.tar.gz", "", "", ""}},
	}
	for _, tc := range cases {
		t.Run(tc.file, func(t *testing.T) {
			if got := InferMeta(tc.file); got != tc.want {
				t.Errorf("InferMeta(%q) = %+v, want %+v", tc.file, got, tc.want)
			}
		})
	}
}
