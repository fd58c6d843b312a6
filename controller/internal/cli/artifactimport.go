package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferrydeploy/ferry/controller/internal/pushclient"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/bytesize"
)

func (a *app) artifactImportCmd() *cobra.Command {
	var req ferryv1.ImportArtifactRequest
	var caFile string
	cmd := &cobra.Command{
		Use:   "import URL-or-PATH (--checksum sha256:HEX | --checksum-url URL) [--ca-bundle FILE]",
		Short: "Have the controller fetch an artifact from an internal HTTP(S) repository or a share mounted on it",
		Long: `Have the controller fetch an artifact itself and store it as a push does.

The source is an http:// or https:// URL the controller can reach (an
internal repository), or an absolute path on the controller below one of its
--import-dir directories (e.g. a mounted NFS share); other paths are
refused. HTTPS servers are verified with the controller's system roots, or
with the CA certificates of --ca-bundle (a PEM file read here and sent
along) for an internal PKI.

The expected digest is required: --checksum, or --checksum-url naming a
.sha256 or SHA256SUMS file (a URL or a path, as the source) whose line for
the file is used. Nothing is recorded unless the fetched bytes match it; a
mismatch leaves no artifact and no partial download. A transfer that breaks
resumes where it stopped (HTTP Range with If-Range), and running the same
import again after an interruption resumes from what the controller kept.
Name, version, OS and architecture are read from the file name as for
` + "`artifact push`" + `. --timeout does not limit the transfer.`,
		Example: `  ferryctl artifact import https://repo.dc1.internal/go/go1.20.3.linux-amd64.tar.gz \
      --checksum-url https://repo.dc1.internal/go/go1.20.3.linux-amd64.tar.gz.sha256 --ca-bundle dc1-ca.pem
  ferryctl artifact import /mnt/releases/myapp-2.4.1-linux-amd64.tar.gz --checksum-url /mnt/releases/SHA256SUMS`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Source = args[0]
			if req.Sha256 == "" && req.ChecksumUrl == "" {
				return errors.New("give the file's published checksum: --checksum sha256:HEX, or --checksum-url URL (a .sha256 or SHA256SUMS file the controller reads)")
			}
			if caFile != "" {
				pem, err := readCABundle(caFile)
				if err != nil {
					return err
				}
				req.CaBundle = pem
			}
			conn, err := a.connect()
			if err != nil {
				return err
			}
			start := time.Now()
			stream, err := ferryv1.NewArtifactServiceClient(conn).ImportArtifact(cmd.Context(), &req)
			if err != nil {
				return err
			}
			var bar *progressBar
			var resumed uint64
			defer func() {
				if bar != nil {
					bar.done()
				}
			}()
			for {
				msg, err := stream.Recv()
				if errors.Is(err, io.EOF) {
					return errors.New("the controller ended the import without a result; see `ferryctl audit` and the controller's log")
				}
				if err != nil {
					return err
				}
				if p := msg.GetProgress(); p != nil {
					resumed = p.ResumedFrom
					if p.Stage == "fetching" {
						if bar == nil {
							bar = a.progress("controller fetching "+args[0], p.Total)
						}
						bar.total = p.Total
						bar.update(p.Received)
					}
					continue
				}
				resp := msg.GetResult()
				if bar != nil {
					bar.done()
					bar = nil
				}
				return a.show(resp, func() error {
					defer a.copiesNote(resp)
					art := resp.GetArtifact()
					switch {
					case resp.Restored:
						fmt.Fprintf(a.stdout, "artifact %s restored: the imported bytes (%s) replaced the damaged copy on the controller, which serves it again\n", pushclient.Key(art), art.Digest)
					case !resp.Created:
						fmt.Fprintf(a.stdout, "artifact %s unchanged: these bytes are already stored (%s)\n", pushclient.Key(art), art.Digest)
					default:
						note := ""
						if resumed > 0 {
							note = fmt.Sprintf(", resumed after %s", bytesize.IEC(resumed))
						}
						fmt.Fprintf(a.stdout, "artifact %s imported: %s, %s%s, checksum matches, %.1fs%s\n", pushclient.Key(art), art.Digest, bytesize.IEC(art.Size), platform(art), time.Since(start).Seconds(), note)
					}
					return nil
				})
			}
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&req.Sha256, "checksum", "", "expected SHA-256: sha256:HEX or 64 hex digits")
	fl.StringVar(&req.ChecksumUrl, "checksum-url", "", "URL or controller path of a checksum file (sha256sum output, BSD style, or the bare digest) with the file's line")
	fl.StringVar(&caFile, "ca-bundle", "", "PEM file (read here) with the CA certificates the controller verifies an https source with, instead of its system roots")
	fl.StringVar(&req.Name, "name", "", "artifact name (default: the source's file name)")
	fl.StringVar(&req.Version, "version", "", "artifact version (default: read from the file name)")
	fl.StringVar(&req.Os, "os", "", "target OS, e.g. linux (default: read from the file name)")
	fl.StringVar(&req.Arch, "arch", "", "target architecture, e.g. amd64 (default: read from the file name)")
	cmd.MarkFlagsMutuallyExclusive("checksum", "checksum-url")
	return cmd
}

// readCABundle reads a PEM file of CA certificates, bounded.
func readCABundle(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("--ca-bundle: %w", err)
	}
	if fi.Size() > 1<<20 {
		return nil, fmt.Errorf("--ca-bundle %s is %s; a CA bundle is a few KiB of PEM certificates", path, bytesize.IEC(uint64(fi.Size()))) //nolint:gosec // a file's size is never negative
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--ca-bundle: %w", err)
	}
	return data, nil
}
