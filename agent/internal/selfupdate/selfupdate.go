// Package selfupdate replaces the running ferry-agent with a new binary
// and puts the previous one back when the new one does not reach the
// controller in time.
//
// The swap keeps two files in the executable's directory: the executable
// itself (say /usr/local/bin/ferry-agent) and ferry-agent.prev, the binary
// it replaced. Staging writes the new binary as .ferry-agent.new beside
// them and runs its --version; Swap hard-links the running binary to
// .prev and renames the new one over the executable, so the path always
// names a whole binary, old or new. A marker file in the state dir
// (agent-update.json) records the swap until the new agent has been
// welcomed by the controller: while it is on probation, the new agent
// restores .prev over the executable and restarts it when the deadline
// passes, and the restored agent reports the job failed.
package selfupdate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/ferrydeploy/ferry/shared/atomicfile"
)

// MarkerFile is the marker's name in the agent's state dir.
const MarkerFile = "agent-update.json"

// The marker's states.
const (
	// Probation: the new binary is in place and has not been welcomed.
	Probation = "probation"
	// Restored: the previous binary is back; the agent that starts
	// reports the job failed with Reason.
	Restored = "restored"
)

// ExitRestart is the exit status an agent run by systemd ends with to be
// started again (the unit restarts on failure); EX_TEMPFAIL.
const ExitRestart = 75

// VersionTimeout bounds a new binary's --version run.
const VersionTimeout = 10 * time.Second

// Marker records a swap in progress.
type Marker struct {
	JobID      string `json:"job_id"`
	RolloutID  string `json:"rollout_id"`
	Exe        string `json:"exe"`  // the executable path swapped
	Prev       string `json:"prev"` // where the replaced binary is kept
	OldVersion string `json:"old_version"`
	NewVersion string `json:"new_version"`
	// Timeout is the reconnect deadline's length, Deadline its end.
	Timeout  time.Duration `json:"timeout"`
	Deadline time.Time     `json:"deadline"`
	State    string        `json:"state"`
	Reason   string        `json:"reason,omitempty"`
	// Args are the previous agent's arguments, which it is restored with.
	Args []string `json:"args"`
}

// Load reads the marker in stateDir; nil when there is none.
func Load(stateDir string) (*Marker, error) {
	b, err := os.ReadFile(filepath.Join(stateDir, MarkerFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("agent update marker: %w", err)
	}
	var m Marker
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("agent update marker %s: %w", filepath.Join(stateDir, MarkerFile), err)
	}
	if m.JobID == "" || m.Exe == "" || m.Prev == "" || (m.State != Probation && m.State != Restored) {
		return nil, fmt.Errorf("agent update marker %s is incomplete; remove it to start without it", filepath.Join(stateDir, MarkerFile))
	}
	return &m, nil
}

// Save writes the marker atomically.
func (m *Marker) Save(stateDir string) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(stateDir, MarkerFile), b, 0o600)
}

// Remove deletes the marker; none is not an error.
func Remove(stateDir string) error {
	err := os.Remove(filepath.Join(stateDir, MarkerFile))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return atomicfile.SyncDir(stateDir)
}

// PrevPath is where the binary exe replaces is kept.
func PrevPath(exe string) string { return exe + ".prev" }

// StagedPath is where a new binary waits beside exe.
func StagedPath(exe string) string {
	return filepath.Join(filepath.Dir(exe), "."+filepath.Base(exe)+".new")
}

// Stage copies the new binary src beside exe (mode 0755) and runs its
// --version, returning the staged path and the version it printed. On any
// error nothing is left behind.
func Stage(ctx context.Context, src, exe string) (staged, version string, err error) {
	staged = StagedPath(exe)
	in, err := os.Open(src)
	if err != nil {
		return "", "", fmt.Errorf("new agent binary: %w", err)
	}
	defer func() { _ = in.Close() }()
	if err := atomicfile.Write(staged, 0o755, func(w io.Writer) error {
		_, err := io.Copy(w, in)
		return err
	}, nil); err != nil {
		return "", "", fmt.Errorf("stage the new agent beside %s: %w", exe, err)
	}
	version, err = Version(ctx, staged)
	if err != nil {
		_ = os.Remove(staged)
		return "", "", err
	}
	return staged, version, nil
}

// Version runs bin --version (bounded by VersionTimeout) and returns the
// version it names: the output must be "ferry-agent VERSION ...".
func Version(ctx context.Context, bin string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, VersionTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--version")
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &limited{&out, 4096}, &limited{&out, 4096}
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	text := strings.TrimSpace(out.String())
	if first, _, _ := strings.Cut(text, "\n"); len(first) > 200 {
		text = first[:200] + "…"
	} else {
		text = first
	}
	switch {
	case ctx.Err() != nil:
		return "", fmt.Errorf("the new agent binary did not answer --version within %s; it was not installed", VersionTimeout)
	case err != nil:
		if text != "" {
			return "", fmt.Errorf("the new agent binary cannot run (--version: %w: %s); it was not installed", err, text)
		}
		return "", fmt.Errorf("the new agent binary cannot run (--version: %w); it was not installed", err)
	}
	fields := strings.Fields(text)
	if len(fields) < 2 || fields[0] != "ferry-agent" {
		return "", fmt.Errorf("the new binary is not a ferry-agent: --version printed %q; it was not installed", text)
	}
	return fields[1], nil
}

type limited struct {
	w io.Writer
	n int
}

func (l *limited) Write(p []byte) (int, error) {
	n := len(p)
	if len(p) > l.n {
		p = p[:l.n]
	}
	l.n -= len(p)
	if len(p) > 0 {
		if _, err := l.w.Write(p); err != nil {
			return 0, err
		}
	}
	return n, nil
}

// Swap keeps the binary at exe as prev (a hard link, or a copy where
// links are not possible) and renames staged over exe: the path names a
// whole binary at every moment.
func Swap(staged, exe, prev string) error {
	if err := keep(exe, prev); err != nil {
		return fmt.Errorf("keep the running agent as %s: %w", prev, err)
	}
	if err := os.Rename(staged, exe); err != nil {
		return fmt.Errorf("swap the new agent in at %s: %w", exe, err)
	}
	return atomicfile.SyncDir(filepath.Dir(exe))
}

// keep makes prev a copy of exe, replacing any older prev atomically.
func keep(exe, prev string) error {
	tmp := prev + ".tmp"
	_ = os.Remove(tmp)
	if err := os.Link(exe, tmp); err != nil {
		in, err := os.Open(exe)
		if err != nil {
			return err
		}
		defer func() { _ = in.Close() }()
		return atomicfile.Write(prev, 0o755, func(w io.Writer) error {
			_, err := io.Copy(w, in)
			return err
		}, nil)
	}
	if err := os.Rename(tmp, prev); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return nil
}

// Restore puts prev back at exe with one rename (prev is gone after it).
func Restore(exe, prev string) error {
	if err := os.Rename(prev, exe); err != nil {
		return fmt.Errorf("restore the previous agent from %s: %w", prev, err)
	}
	return atomicfile.SyncDir(filepath.Dir(exe))
}

// UnderSystemd reports whether systemd runs this process (it sets
// INVOCATION_ID for every unit, NOTIFY_SOCKET for Type=notify).
func UnderSystemd() bool {
	return os.Getenv("INVOCATION_ID") != "" || os.Getenv("NOTIFY_SOCKET") != ""
}

// Unit is the systemd service this process runs in ("" when none).
func Unit() string {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return ""
	}
	return unitOf(string(b))
}

// unitOf reads the service from /proc/self/cgroup: the last element of
// the systemd hierarchy's path (cgroup v2: 0::/system.slice/x.service;
// v1: N:name=systemd:/system.slice/x.service).
func unitOf(cgroup string) string {
	for _, line := range strings.Split(strings.TrimSpace(cgroup), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 || (f[1] != "" && f[1] != "name=systemd") {
			continue
		}
		if name := filepath.Base(f[2]); strings.HasSuffix(name, ".service") {
			return name
		}
	}
	return ""
}

// Exec replaces this process with exe run with args (os.Args[1:] when
// nil) and the same environment. It returns only on error.
func Exec(exe string, args []string) error {
	if args == nil {
		args = os.Args[1:]
	}
	args = append([]string{exe}, args...)
	if err := syscall.Exec(exe, args, os.Environ()); err != nil { //nolint:gosec // exe is the agent's own executable path
		return fmt.Errorf("restart %s: %w", exe, err)
	}
	return nil
}

// Executable is this process's executable with symlinks resolved, the
// path a swap replaces.
func Executable() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", err
	}
	return filepath.EvalSymlinks(exe)
}

// RestoreAfterFailedStart puts the previous binary back when the agent
// on probation in stateDir (of version running) could not start at all,
// and reports whether it did: the caller then restarts the executable.
func RestoreAfterFailedStart(stateDir, running string, cause error) (*Marker, bool) {
	m, err := RestoreOnProbation(stateDir, RestoreRequest{
		Match: func(m *Marker) bool { return m.NewVersion == running },
		Reason: func(m *Marker) string {
			return fmt.Sprintf("new agent could not start (%v); restored ferry-agent %s", cause, m.OldVersion)
		},
	})
	return m, err == nil && m != nil
}
