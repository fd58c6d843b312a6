package cli

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferrydeploy/ferry/controller/internal/pushclient"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/bytesize"
	"github.com/ferrydeploy/ferry/shared/sha256digest"
)

func (a *app) artifactCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "artifact", Aliases: []string{"artifacts"}, Short: "Manage artifacts (release tarballs, binaries) on the controller"}
	cmd.AddCommand(a.artifactPushCmd(), a.artifactImportCmd(), a.artifactListCmd(), a.artifactInspectCmd(), a.artifactRmCmd(), a.artifactVerifyCmd(), a.artifactGcCmd())
	return cmd
}

func (a *app) artifactPushCmd() *cobra.Command {
	var meta pushclient.Meta
	var sum, sumFile string
	push := &cobra.Command{
		Use:   "push FILE [--sha256 HEX | --checksum-file FILE.sha256]",
		Short: "Upload a file to the controller's artifact store, checked against its published checksum",
		Long: `Upload a file to the controller's artifact store.

The file is hashed here first: when a checksum is given (--sha256, or
--checksum-file with sha256sum output as release pages publish it), a file
that does not match is refused before anything is sent. The controller
hashes what it receives again and keeps nothing unless it matches. Pushing
the same bytes under the same name and version again changes nothing.

Unless given, the name is the file's base name and the version, OS and
architecture are read from it: the version is the first dotted number
(go1.20.3.linux-amd64.tar.gz -> 1.20.3, node-v18.16.0-linux-x64.tar.xz ->
18.16.0, terraform_1.5.7_linux_amd64.zip -> 1.5.7), OS and architecture the
first known words (linux, darwin, ...; amd64, arm64, with x86_64 and x64
read as amd64 and aarch64 as arm64). --timeout does not limit the upload.`,
		Example: `  ferryctl artifact push go1.20.3.linux-amd64.tar.gz --checksum-file go1.20.3.linux-amd64.tar.gz.sha256
  ferryctl artifact push ./myapp --name myapp --version 2.4.1 --os linux --arch amd64`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			path := args[0]
			if strings.HasPrefix(path, "http://") || strings.HasPrefix(path, "https://") {
				return fmt.Errorf("artifact push uploads a file from this machine; to have the controller fetch %s itself, run `ferryctl artifact import %s --checksum-url URL.sha256` (or --checksum sha256:HEX)", path, path)
			}
			f, err := os.Open(path)
			if err != nil {
				return err
			}
			defer func() { _ = f.Close() }() // read-only
			fi, err := f.Stat()
			if err != nil {
				return err
			}
			if !fi.Mode().IsRegular() {
				return fmt.Errorf("%s is not a regular file", path)
			}
			inferred := pushclient.InferMeta(path)
			m := inferred.Override(meta)
			if m.Version == "" {
				return fmt.Errorf("cannot tell a version from the file name %q; give one with --version", inferred.Name)
			}
			want, source, err := declaredChecksum(path, sum, sumFile)
			if err != nil {
				return err
			}
			conn, err := a.connect()
			if err != nil {
				return err
			}
			size := uint64(fi.Size()) //nolint:gosec // a regular file's size is never negative
			ref := m.Name + "@" + m.Version

			bar := a.progress("hashing "+m.Name, size)
			got, err := hashFile(f, bar.update)
			bar.done()
			if err != nil {
				return fmt.Errorf("read %s: %w", path, err)
			}
			if want != "" && got != want {
				return fmt.Errorf("artifact %s: sha256 mismatch: got sha256:%s, want sha256:%s (from %s); the file differs from the published one, nothing was uploaded", m.Name, got, want, source)
			}
			if _, err := f.Seek(0, io.SeekStart); err != nil {
				return err
			}
			hdr := &ferryv1.PushArtifactHeader{Name: m.Name, Version: m.Version, Os: m.OS, Arch: m.Arch, Size: size, Sha256: got}
			bar = a.progress("pushing "+ref, size)
			start := time.Now()
			resp, err := pushclient.Push(cmd.Context(), ferryv1.NewArtifactServiceClient(conn), hdr, f, bar.update)
			bar.done()
			if err != nil {
				return err
			}
			return a.show(resp, func() error {
				defer a.copiesNote(resp)
				art := resp.Artifact
				if resp.Restored {
					fmt.Fprintf(a.stdout, "artifact %s restored: these bytes (%s) replaced the damaged copy on the controller, which serves it again\n", pushclient.Key(art), art.Digest)
					return nil
				}
				if !resp.Created {
					fmt.Fprintf(a.stdout, "artifact %s unchanged: these bytes are already stored (%s)\n", pushclient.Key(art), art.Digest)
					return nil
				}
				secs := time.Since(start).Seconds()
				fmt.Fprintf(a.stdout, "artifact %s pushed: %s, %s%s, %s in %.1fs\n", pushclient.Key(art), art.Digest, bytesize.IEC(art.Size), platform(art), checkedBy(source), secs)
				return nil
			})
		},
	}
	fl := push.Flags()
	fl.StringVar(&meta.Name, "name", "", "artifact name (default: the file's base name)")
	fl.StringVar(&meta.Version, "version", "", "artifact version (default: read from the file name)")
	fl.StringVar(&meta.OS, "os", "", "target OS, e.g. linux (default: read from the file name)")
	fl.StringVar(&meta.Arch, "arch", "", "target architecture, e.g. amd64 (default: read from the file name)")
	fl.StringVar(&sum, "sha256", "", "expected SHA-256 of the file (64 hex digits)")
	fl.StringVar(&sumFile, "checksum-file", "", "file with the expected SHA-256 (sha256sum output, BSD style, or the bare digest)")
	push.MarkFlagsMutuallyExclusive("sha256", "checksum-file")
	return push
}

// declaredChecksum returns the expected digest (lowercase hex, "" when none
// was given) and where it came from.
func declaredChecksum(path, sum, sumFile string) (string, string, error) {
	switch {
	case sum != "":
		h, err := sha256digest.ParseHex(sum)
		if err != nil {
			return "", "", fmt.Errorf("--sha256 %q must be 64 hex digits", sum)
		}
		return h, "--sha256", nil
	case sumFile != "":
		data, err := os.ReadFile(sumFile)
		if err != nil {
			return "", "", fmt.Errorf("--checksum-file: %w", err)
		}
		h, err := pushclient.ParseChecksumFile(data, path)
		if err != nil {
			return "", "", fmt.Errorf("checksum file %s: %w", sumFile, err)
		}
		return h, sumFile, nil
	}
	return "", "", nil
}

func checkedBy(source string) string {
	if source == "" {
		return "no checksum given"
	}
	return "checksum matches " + source
}

// osArch is "os/arch", or "" when the artifact names neither.
func osArch(a *ferryv1.Artifact) string {
	if a.Os == "" && a.Arch == "" {
		return ""
	}
	return orDash(a.Os) + "/" + orDash(a.Arch)
}

func platform(a *ferryv1.Artifact) string {
	if s := osArch(a); s != "" {
		return " (" + s + ")"
	}
	return ""
}

func hashFile(r io.Reader, progress func(uint64)) (string, error) {
	h := sha256.New()
	buf := make([]byte, pushclient.ChunkSize)
	var done uint64
	for {
		n, err := r.Read(buf)
		h.Write(buf[:n])
		done += uint64(n) //nolint:gosec // Read never returns a negative count
		progress(done)
		if err == io.EOF {
			return hex.EncodeToString(h.Sum(nil)), nil
		}
		if err != nil {
			return "", err
		}
	}
}

func (a *app) artifactListCmd() *cobra.Command {
	var name string
	list := &cobra.Command{
		Use:   "list",
		Short: "List artifacts, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			resp, err := call(a, cmd, ferryv1.NewArtifactServiceClient, ferryv1.ArtifactServiceClient.ListArtifacts, &ferryv1.ListArtifactsRequest{Name: name})
			if err != nil {
				return err
			}
			return a.show(resp, func() error {
				now := time.Now()
				return printTable(a, []string{"NAME", "VERSION", "OS/ARCH", "SIZE", "DIGEST", "STATE", "PUSHED", "BY"}, resp.Artifacts, func(art *ferryv1.Artifact) []string {
					return []string{art.Name, art.Version, orDash(osArch(art)), bytesize.IEC(art.Size), shortDigest(art.Digest), stateWord(art), age(now.Sub(art.PushedAt.AsTime())) + " ago", orDash(art.PushedBy)}
				})
			})
		},
	}
	list.Flags().StringVar(&name, "name", "", "only artifacts with this name")
	return list
}

const refHelp = "REF is NAME@VERSION, sha256:PREFIX (at least a few hex digits of the digest), or a NAME with a single version."

func (a *app) artifactInspectCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "inspect REF",
		Short: "Show an artifact's metadata and the packages that use it",
		Long:  "Show an artifact's metadata and the packages that use it. " + refHelp,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			resp, err := call(a, cmd, ferryv1.NewArtifactServiceClient, ferryv1.ArtifactServiceClient.GetArtifact, &ferryv1.GetArtifactRequest{Ref: args[0]})
			if err != nil {
				return err
			}
			return a.show(resp, func() error {
				art := resp.Artifact
				refs := "-"
				if len(resp.ReferencedBy) > 0 {
					refs = strings.Join(resp.ReferencedBy, ", ")
				}
				fmt.Fprintf(a.stdout, "Name:      %s\nVersion:   %s\nOS/Arch:   %s/%s\nSize:      %s (%d bytes)\nDigest:    %s\nState:     %s\nPushed:    %s by %s\nUsed by:   %s\n",
					art.Name, art.Version, orDash(art.Os), orDash(art.Arch), bytesize.IEC(art.Size), art.Size, art.Digest, stateLine(art),
					art.PushedAt.AsTime().Local().Format(time.RFC3339), orDash(art.PushedBy), refs)
				if art.ZstdDigest != "" {
					fmt.Fprintf(a.stdout, "Zstd form: %s (%d bytes), %s; agents that support zstd download this\n", bytesize.IEC(art.ZstdSize), art.ZstdSize, art.ZstdDigest)
				}
				return nil
			})
		},
	}
}

func (a *app) artifactRmCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "rm REF",
		Short: "Remove an artifact no package references",
		Long:  "Remove an artifact. It is refused while a package references the artifact's bytes. " + refHelp,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			resp, err := call(a, cmd, ferryv1.NewArtifactServiceClient, ferryv1.ArtifactServiceClient.DeleteArtifact, &ferryv1.DeleteArtifactRequest{Ref: args[0]})
			if err != nil {
				return err
			}
			return a.show(resp, func() error {
				fmt.Fprintf(a.stdout, "artifact %s (%s) removed\n", pushclient.Key(resp.Artifact), shortDigest(resp.Artifact.Digest))
				return nil
			})
		},
	}
}

func (a *app) artifactVerifyCmd() *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use:   "verify [REF | --all]",
		Short: "Hash stored artifacts again on the controller and quarantine damaged ones",
		Long: `Hash stored artifacts again on the controller and compare each with its digest.

An artifact whose stored bytes no longer match is quarantined: agents are
refused it (their jobs fail saying so) until the same file is pushed again
with ` + "`ferryctl artifact push`" + `, which restores it. One that matches again is
served again. Exits 1 when an artifact is damaged or could not be checked.
--timeout does not limit the hashing. ` + refHelp,
		Example: `  ferryctl artifact verify go1.20.3.linux-amd64.tar.gz@1.20.3
  ferryctl artifact verify --all`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ref := ""
			if len(args) == 1 {
				ref = args[0]
			}
			switch {
			case ref == "" && !all:
				return errors.New("name the artifact to verify (REF), or verify all of them with --all")
			case ref != "" && all:
				return errors.New("give REF or --all, not both")
			}
			conn, err := a.connect()
			if err != nil {
				return err
			}
			stream, err := ferryv1.NewArtifactServiceClient(conn).VerifyArtifacts(cmd.Context(), &ferryv1.VerifyArtifactsRequest{Ref: ref, All: all})
			if err != nil {
				return err
			}
			var checked int
			var bad, unchecked []string
			for {
				r, err := stream.Recv()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					return err
				}
				checked++
				key := pushclient.Key(r.Artifact)
				switch {
				case r.Artifact.GetState() == ferryv1.ArtifactState_ARTIFACT_STATE_DAMAGED:
					bad = append(bad, key)
				case r.Error != "":
					unchecked = append(unchecked, key)
				}
				if a.machine() {
					if err := a.emit(r); err != nil {
						return err
					}
					continue
				}
				fmt.Fprintln(a.stdout, verifyLine(r))
			}
			if !a.machine() {
				fmt.Fprintf(a.stdout, "verified %d artifact(s): %d ok, %d damaged, %d not checked\n", checked, checked-len(bad)-len(unchecked), len(bad), len(unchecked))
			}
			switch {
			case len(bad) > 0:
				return &ExitError{Code: 1, Err: fmt.Errorf("%d artifact(s) damaged on the controller (%s): agents are refused them until you push each again from its original file with `ferryctl artifact push FILE --name NAME --version VERSION`", len(bad), strings.Join(bad, ", "))}
			case len(unchecked) > 0:
				return &ExitError{Code: 1, Err: fmt.Errorf("%d artifact(s) could not be checked (%s): run `ferryctl artifact verify` on them again", len(unchecked), strings.Join(unchecked, ", "))}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "verify every stored artifact")
	return cmd
}

// verifyLine is one artifact's check: ok, or damaged with both digests.
func verifyLine(r *ferryv1.VerifyArtifactsResponse) string {
	art := r.Artifact
	label := "artifact " + pushclient.Key(art)
	switch {
	case art.GetState() == ferryv1.ArtifactState_ARTIFACT_STATE_DAMAGED && r.GotDigest != "":
		return fmt.Sprintf("%s: damaged: got %s, want %s; quarantined until pushed again", label, r.GotDigest, art.Digest)
	case art.GetState() == ferryv1.ArtifactState_ARTIFACT_STATE_DAMAGED:
		return fmt.Sprintf("%s: damaged: %s (want %s); quarantined until pushed again", label, orDash(r.Error), art.Digest)
	case r.Error != "":
		return fmt.Sprintf("%s: not checked: %s", label, r.Error)
	}
	return fmt.Sprintf("%s: ok, %s", label, art.Digest)
}

// stateWord is an artifact's state in a table: ok or damaged.
func stateWord(art *ferryv1.Artifact) string {
	if art.GetState() == ferryv1.ArtifactState_ARTIFACT_STATE_DAMAGED {
		return "damaged"
	}
	return "ok"
}

// stateLine is an artifact's state with when it was found and the fix.
func stateLine(art *ferryv1.Artifact) string {
	checked := ""
	if art.CheckedAt != nil {
		checked = art.CheckedAt.AsTime().Local().Format(time.RFC3339)
	}
	if art.GetState() != ferryv1.ArtifactState_ARTIFACT_STATE_DAMAGED {
		if checked == "" {
			return "ok"
		}
		return "ok (hashed " + checked + ")"
	}
	found := "its blob file is missing"
	if art.StoredDigest != "" {
		found = "its stored bytes hash to " + art.StoredDigest
	}
	return fmt.Sprintf("damaged (found %s): %s; agents are refused it until you push the same file again (`ferryctl artifact push FILE --name %s --version %s`)", orDash(checked), found, art.Name, art.Version)
}

// progressBar draws a one-line progress report on a terminal, at most ten
// times a second; elsewhere it draws nothing.
type progressBar struct {
	mu    sync.Mutex
	w     io.Writer
	label string
	total uint64
	start time.Time
	last  time.Time
	shown uint64
	drawn bool
}

func (a *app) progress(label string, total uint64) *progressBar {
	p := &progressBar{label: label, total: total, start: time.Now()}
	if isTerminal(a.stderr) {
		p.w = a.stderr
	}
	return p
}

func (p *progressBar) update(done uint64) {
	if p.w == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	if (p.drawn && done == p.shown) || (now.Sub(p.last) < 100*time.Millisecond && done < p.total) {
		return
	}
	p.last, p.shown, p.drawn = now, done, true
	pct := 100.0
	if p.total > 0 {
		pct = 100 * float64(done) / float64(p.total)
	}
	rate := float64(done) / now.Sub(p.start).Seconds()
	fmt.Fprintf(p.w, "\r\033[K%s: %s / %s (%.0f%%) %s/s", p.label, bytesize.IEC(done), bytesize.IEC(p.total), pct, bytesize.IEC(uint64(rate)))
}

func (p *progressBar) done() {
	if p.w != nil && p.drawn {
		fmt.Fprint(p.w, "\r\033[K")
	}
}

// copiesNote says, after a push or import, how many controllers hold the
// bytes when there are several, and warns when it is only one.
func (a *app) copiesNote(resp *ferryv1.PushArtifactResponse) {
	switch {
	case resp.GetWarning() != "":
		fmt.Fprintf(a.stderr, "warning: %s\n", resp.GetWarning())
	case resp.GetCopies() > 1:
		fmt.Fprintf(a.stdout, "on %d controllers\n", resp.GetCopies())
	}
}
