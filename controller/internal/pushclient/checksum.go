package pushclient

import (
	"bufio"
	"bytes"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
)

// ParseChecksumFile finds the SHA-256 of fileName (compared by base name)
// in a checksum file as release pages publish them:
//
//   - sha256sum output, one "<hex>  <name>" (text mode) or "<hex> *<name>"
//     (binary mode) per line, possibly for many files;
//   - BSD style "SHA256 (<name>) = <hex>";
//   - a file holding only the hex digest (as go.dev/dl publishes
//     go1.20.3.linux-amd64.tar.gz.sha256), which then applies to any name.
//
// Blank lines and lines starting with '#' are skipped. It returns lowercase
// hex.
func ParseChecksumFile(data []byte, fileName string) (string, error) {
	base := filepath.Base(fileName)
	var bare []string
	var names []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		sum, name, err := parseChecksumLine(text)
		if err != nil {
			return "", fmt.Errorf("line %d: %w", line, err)
		}
		if name == "" {
			bare = append(bare, sum)
			continue
		}
		names = append(names, name)
		if filepath.Base(name) == base {
			return sum, nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	switch {
	case len(bare) == 1 && len(names) == 0:
		return bare[0], nil
	case len(bare) > 1:
		return "", fmt.Errorf("it holds %d digests without file names; pass the right one with --sha256", len(bare))
	case len(names) > 0:
		if len(names) > 5 {
			names = append(names[:5], "...")
		}
		return "", fmt.Errorf("it has no line for %s (it lists %s)", base, strings.Join(names, ", "))
	}
	return "", fmt.Errorf("it holds no SHA-256 digest")
}

var bsdLine = regexp.MustCompile(`^SHA256 ?\((.+)\) ?= ?([0-9A-Fa-f]{64})$`)

func parseChecksumLine(text string) (sum, name string, err error) {
	if m := bsdLine.FindStringSubmatch(text); m != nil {
		return strings.ToLower(m[2]), m[1], nil
	}
	field, rest, _ := strings.Cut(text, " ")
	field = strings.TrimPrefix(field, "\\") // sha256sum escapes names with backslashes this way
	if len(field) != 64 || strings.Trim(strings.ToLower(field), "0123456789abcdef") != "" {
		return "", "", fmt.Errorf("%q is not sha256sum output (want \"<64 hex digits>  <file name>\")", abbreviate(text))
	}
	name = strings.TrimLeft(rest, " ")
	name = strings.TrimPrefix(name, "*")
	return strings.ToLower(field), name, nil
}

func abbreviate(s string) string {
	if len(s) > 60 {
		return s[:57] + "..."
	}
	return s
}

// Meta is what a release file's name tells about it.
type Meta struct {
	Name, Version, OS, Arch string
}

// Override returns m with the fields over sets (an admin's --name,
// --version, --os, --arch) in place of those read from the name.
func (m Meta) Override(over Meta) Meta {
	for _, o := range []struct {
		dst *string
		v   string
	}{{&m.Name, over.Name}, {&m.Version, over.Version}, {&m.OS, over.OS}, {&m.Arch, over.Arch}} {
		if o.v != "" {
			*o.dst = o.v
		}
	}
	return m
}

var (
	// A version is the first run of dot-separated numbers (at least two),
	// optionally led by "v" and followed by a pre-release tag, that starts
	// the name or follows a letter, '-', '_' or '.'. This matches
	// go1.20.3.linux-amd64.tar.gz (1.20.3), node-v18.16.0-linux-x64.tar.xz
	// (18.16.0), terraform_1.5.7_linux_amd64.zip (1.5.7) and
	// app-2.0.0-rc.1.tar.gz (2.0.0-rc.1).
	versionRE = regexp.MustCompile(`(?:^|[A-Za-z._-])v?(\d+(?:\.\d+)+(?:-(?:rc|alpha|beta|pre|dev)[.]?\d*)?)`)
	osRE      = regexp.MustCompile(`(?i)(?:^|[._-])(linux|darwin|windows|freebsd|netbsd|openbsd|illumos|solaris|aix)(?:[._-]|$)`)
	archRE    = regexp.MustCompile(`(?i)(?:^|[._-])(amd64|x86_64|x64|arm64|aarch64|armv6l|armv7l?|arm|386|i386|i686|ppc64le|ppc64|s390x|riscv64|loong64|mips64le|mips64)(?:[._-]|$)`)
	archFix   = map[string]string{"x86_64": "amd64", "x64": "amd64", "aarch64": "arm64", "i386": "386", "i686": "386"}
)

// InferMeta reads name, version, OS and architecture from a release file
// name the way ferryctl artifact push does when --name, --version, --os or
// --arch are not given: the name is the file's base name; the version is
// the first dotted number (see versionRE); OS and architecture are the Go
// names of the first known OS and CPU words (x86_64 and x64 become amd64,
// aarch64 arm64). Fields it cannot tell are empty.
func InferMeta(fileName string) Meta {
	base := filepath.Base(fileName)
	if base == "/" || base == "." {
		return Meta{}
	}
	m := Meta{Name: base}
	if v := versionRE.FindStringSubmatch(base); v != nil {
		m.Version = v[1]
	}
	if o := osRE.FindStringSubmatch(base); o != nil {
		m.OS = strings.ToLower(o[1])
	}
	if a := archRE.FindStringSubmatch(base); a != nil {
		arch := strings.ToLower(a[1])
		if fixed, ok := archFix[arch]; ok {
			arch = fixed
		}
		m.Arch = arch
	}
	return m
}
