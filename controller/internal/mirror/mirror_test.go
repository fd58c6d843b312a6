package mirror

import (
	"errors"
	"strings"
	"testing"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

func TestNormalize(t *testing.T) {
	for _, tc := range []struct {
		group, prefix string
		want          string // normalized prefix, or the error's words
		ok            bool
	}{
		{"sh1", "https://mirror.sh1/ferry/", "https://mirror.sh1/ferry", true},
		{"sh1", "http://10.0.0.5:8080", "http://10.0.0.5:8080", true},
		{"", "https://m/ferry", "name the group", false},
		{"sh 1", "https://m/ferry", "invalid", false},
		{"sh1", "ftp://m/ferry", "give an http:// or https:// URL", false},
		{"sh1", "https:///ferry", "names no host", false},
		{"sh1", "https://u:secret@m/ferry", "carries a user name or password", false},
		{"sh1", "https://m/ferry?x=1", "drop the query", false},
	} {
		m := &ferryv1.Mirror{Group: tc.group, UrlPrefix: tc.prefix}
		err := Normalize(m)
		switch {
		case tc.ok && (err != nil || m.UrlPrefix != tc.want || m.Layout != ferryv1.MirrorLayout_MIRROR_LAYOUT_NAME):
			t.Errorf("%s %s: %v, %q %v; want %q, layout name", tc.group, tc.prefix, err, m.UrlPrefix, m.Layout, tc.want)
		case !tc.ok && (!errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s %s: %v; want an error with %q", tc.group, tc.prefix, err, tc.want)
		}
		if strings.Contains(tc.prefix, "secret") && err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("the error shows the password: %v", err)
		}
	}
	if err := Normalize(&ferryv1.Mirror{Group: "sh1", UrlPrefix: "https://m", CaBundle: []byte("x")}); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Errorf("a CA bundle without certificates: %v", err)
	}
}

func TestURL(t *testing.T) {
	ref := &ferryv1.ArtifactRef{Name: "go 1.20.3.tar.gz", Digest: "sha256:abc123"}
	byName := &ferryv1.Mirror{UrlPrefix: "https://m/ferry", Layout: ferryv1.MirrorLayout_MIRROR_LAYOUT_NAME}
	bySum := &ferryv1.Mirror{UrlPrefix: "https://m/ferry", Layout: ferryv1.MirrorLayout_MIRROR_LAYOUT_SHA256}
	if got := URL(byName, ref); got != "https://m/ferry/go%201.20.3.tar.gz" {
		t.Errorf("name layout: %s", got)
	}
	if got := URL(bySum, ref); got != "https://m/ferry/sha256/abc123" {
		t.Errorf("sha256 layout: %s", got)
	}
	if got := Sources(byName, &ferryv1.Package{}); got != nil {
		t.Errorf("a package without an artifact gets mirrors %v", got)
	}
	if got := Sources(nil, &ferryv1.Package{Artifact: ref}); got != nil {
		t.Errorf("no mirror gives sources %v", got)
	}
	if l, err := ParseLayout("sha256"); err != nil || l != ferryv1.MirrorLayout_MIRROR_LAYOUT_SHA256 {
		t.Errorf("ParseLayout(sha256) = %v, %v", l, err)
	}
	if _, err := ParseLayout("flat"); err == nil {
		t.Error("ParseLayout(flat) accepted")
	}
}
