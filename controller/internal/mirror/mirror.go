// Package mirror is the controller's side of site-local artifact mirrors:
// an admin sets one HTTP(S) URL prefix per group (ferryctl mirror set),
// and every job sent to a node of that group names the URL its artifact
// has on the mirror. The agent tries it first, checks the whole file's
// digest, and falls back to the controller's stream, so a slow WAN link
// to a site carries each artifact once (when the site's mirror is filled)
// instead of once per node.
//
// Layouts below the prefix:
//
//	name:   <prefix>/<artifact name>     e.g. .../go1.20.3.linux-amd64.tar.gz
//	sha256: <prefix>/sha256/<hex digest> (content-addressed, as the controller stores blobs)
package mirror

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strings"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/labels"
	"github.com/ferrydeploy/ferry/shared/sha256digest"
)

// ErrInvalid marks a mirror setting that is refused.
var ErrInvalid = errors.New("invalid mirror")

// maxCABundle bounds the PEM a mirror carries into every job.
const maxCABundle = 64 << 10

// Normalize checks m and brings it to its stored form: the prefix without
// a trailing '/', the layout set.
func Normalize(m *ferryv1.Mirror) error {
	if m.GetGroup() == "" {
		return fmt.Errorf("%w: name the group whose agents use the mirror (--group)", ErrInvalid)
	}
	if err := labels.ValidateValue("group", m.GetGroup()); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	u, err := url.Parse(strings.TrimSpace(m.GetUrlPrefix()))
	switch {
	case err != nil:
		return fmt.Errorf("%w: URL prefix %q: %w", ErrInvalid, m.GetUrlPrefix(), err)
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Errorf("%w: URL prefix %q: give an http:// or https:// URL", ErrInvalid, m.GetUrlPrefix())
	case u.Host == "":
		return fmt.Errorf("%w: URL prefix %q names no host", ErrInvalid, m.GetUrlPrefix())
	case u.User != nil:
		return fmt.Errorf("%w: URL prefix %s carries a user name or password, which every job would carry to the nodes; serve the mirror without one", ErrInvalid, u.Redacted())
	case u.RawQuery != "" || u.Fragment != "":
		return fmt.Errorf("%w: URL prefix %q: artifact paths are appended to it; drop the query or fragment", ErrInvalid, m.GetUrlPrefix())
	}
	u.Path = strings.TrimRight(u.Path, "/")
	u.RawPath = ""
	m.UrlPrefix = u.String()
	if m.Layout == ferryv1.MirrorLayout_MIRROR_LAYOUT_UNSPECIFIED {
		m.Layout = ferryv1.MirrorLayout_MIRROR_LAYOUT_NAME
	}
	if _, ok := ferryv1.MirrorLayout_name[int32(m.Layout)]; !ok {
		return fmt.Errorf("%w: unknown layout %d", ErrInvalid, m.Layout)
	}
	if len(m.CaBundle) > 0 {
		if len(m.CaBundle) > maxCABundle {
			return fmt.Errorf("%w: the CA bundle is %d bytes; at most %d (it travels with every job)", ErrInvalid, len(m.CaBundle), maxCABundle)
		}
		if !x509.NewCertPool().AppendCertsFromPEM(m.CaBundle) {
			return fmt.Errorf("%w: the CA bundle holds no PEM certificate", ErrInvalid)
		}
	}
	return nil
}

// LayoutName is a layout's word in the CLI and listings.
func LayoutName(l ferryv1.MirrorLayout) string {
	if l == ferryv1.MirrorLayout_MIRROR_LAYOUT_SHA256 {
		return "sha256"
	}
	return "name"
}

// ParseLayout reads a layout word.
func ParseLayout(s string) (ferryv1.MirrorLayout, error) {
	switch s {
	case "", "name":
		return ferryv1.MirrorLayout_MIRROR_LAYOUT_NAME, nil
	case "sha256":
		return ferryv1.MirrorLayout_MIRROR_LAYOUT_SHA256, nil
	}
	return 0, fmt.Errorf("%w: layout %q: give name (<prefix>/<artifact name>) or sha256 (<prefix>/sha256/<hex>)", ErrInvalid, s)
}

// URL is where m serves the artifact ref; "" when ref lacks what the
// layout needs.
func URL(m *ferryv1.Mirror, ref *ferryv1.ArtifactRef) string {
	switch m.GetLayout() {
	case ferryv1.MirrorLayout_MIRROR_LAYOUT_SHA256:
		hexsum := strings.TrimPrefix(ref.GetDigest(), sha256digest.Prefix)
		if hexsum == "" {
			return ""
		}
		return m.GetUrlPrefix() + "/sha256/" + hexsum
	default:
		if ref.GetName() == "" {
			return ""
		}
		return m.GetUrlPrefix() + "/" + url.PathEscape(ref.GetName())
	}
}

// Sources is what a job for a node of m's group carries: the mirror URL of
// the job's artifact; nil without a mirror or an artifact.
func Sources(m *ferryv1.Mirror, pkg *ferryv1.Package) []*ferryv1.MirrorSource {
	if m == nil || pkg.GetArtifact() == nil {
		return nil
	}
	u := URL(m, pkg.GetArtifact())
	if u == "" {
		return nil
	}
	return []*ferryv1.MirrorSource{{Url: u, CaBundle: m.GetCaBundle()}}
}
