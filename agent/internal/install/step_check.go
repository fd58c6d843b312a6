package install

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

const (
	defaultCheckTimeout = 30 * time.Second
	maxCheckOutput      = 64 << 10
	basePath            = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

// checkKind runs a command with a timeout in a login-like environment:
// the package's env files sourced, a clean base environment, the install
// root as working directory. It expects exit 0 and, optionally, a string
// in the output. See the package comment for how a non-"/" root is
// handled.
type checkKind struct{ i *Installer }

func (checkKind) Verifies() {}

func (checkKind) Describe(s *ferryv1.Step) string { return "check: " + s.GetCheck().GetRun() }

func (checkKind) Validate(r validateRequest) error {
	s := r.step.GetCheck()
	if strings.TrimSpace(s.GetRun()) == "" {
		return errors.New("check has no command")
	}
	if s.GetTimeout().AsDuration() < 0 {
		return errors.New("negative timeout")
	}
	return nil
}

func (checkKind) Plan(_ context.Context, r stepRequest) (stepResponse, error) {
	return stepResponse{detail: "would run " + r.step.GetCheck().GetRun()}, nil
}

func (k checkKind) Apply(ctx context.Context, r stepRequest) (stepResponse, error) {
	i, jc, s := k.i, r.job, r.step.GetCheck()
	timeout := s.GetTimeout().AsDuration()
	if timeout <= 0 {
		timeout = defaultCheckTimeout
	}
	var script strings.Builder
	profiles, err := i.profilesForCheck(jc, r.index)
	if err != nil {
		return stepResponse{}, err
	}
	for _, p := range profiles {
		fmt.Fprintf(&script, ". %s\n", shellQuote(p))
	}
	script.WriteString(s.GetRun())
	script.WriteByte('\n')

	cmdCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(cmdCtx, i.shell, "-c", script.String())
	cmd.Dir = i.root
	cmd.Env = i.checkEnv(jc.pkg)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		// The whole process group: a check's children must not outlive it.
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	cmd.WaitDelay = 2 * time.Second
	out := &outputLog{max: maxCheckOutput}
	step := i.describe(r.step)
	cmd.Stdout = out.stream(func(text string) {
		jc.logf(LogLine{Step: step, Stream: ferryv1.LogStream_LOG_STREAM_STDOUT, Text: text})
	})
	cmd.Stderr = out.stream(func(text string) {
		jc.logf(LogLine{Step: step, Stream: ferryv1.LogStream_LOG_STREAM_STDERR, Text: text})
	})
	err = cmd.Run()
	out.flush()
	output := out.String()
	switch {
	case cmdCtx.Err() != nil && ctx.Err() == nil:
		return stepResponse{output: output}, fmt.Errorf("check %q timed out after %v", s.GetRun(), timeout)
	case ctx.Err() != nil:
		return stepResponse{output: output}, ctx.Err()
	case err != nil:
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return stepResponse{output: output}, fmt.Errorf("check %q exited with status %d: %s", s.GetRun(), ee.ExitCode(), lastLine(output))
		}
		return stepResponse{output: output}, fmt.Errorf("check %q: %w", s.GetRun(), err)
	case s.GetExpect() != "" && !strings.Contains(output, s.GetExpect()):
		return stepResponse{output: output}, fmt.Errorf("check %q: output does not contain %q: %s", s.GetRun(), s.GetExpect(), lastLine(output))
	}
	detail := "passed"
	if s.GetExpect() != "" {
		detail = fmt.Sprintf("passed (output contains %q)", s.GetExpect())
	}
	return stepResponse{detail: detail, output: output}, nil
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if k := strings.LastIndexByte(s, '\n'); k >= 0 {
		s = s[k+1:]
	}
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	if s == "" {
		return "(no output)"
	}
	return s
}

// profilesForCheck returns the profile scripts a check sources: those of
// the steps before it, the installed files under "/", copies with paths
// mapped under the root otherwise.
func (i *Installer) profilesForCheck(jc *jobCtx, index int) ([]string, error) {
	var paths []string
	for _, s := range jc.pkg.GetSteps()[:index] {
		_, k := i.kindOf(s)
		pr, ok := k.(profiler)
		if !ok {
			continue
		}
		path, script := pr.Profile(jc.pkg.GetName(), s, i.mapUnderRoot)
		if i.root == "/" {
			p, err := i.resolve(path)
			if err != nil {
				return nil, err
			}
			paths = append(paths, p)
			continue
		}
		p := filepath.Join(i.dir, "tmp", fmt.Sprintf("%s-env-%d.sh", jc.key, len(paths)))
		if err := os.WriteFile(p, script, 0o644); err != nil {
			return nil, fmt.Errorf("prepare env for the check: %w", err)
		}
		paths = append(paths, p)
	}
	return paths, nil
}

// mapUnderRoot maps a value, or each element of a ':'-list, that is an
// absolute path under the install root.
func (i *Installer) mapUnderRoot(v string) string {
	if i.root == "/" {
		return v
	}
	parts := strings.Split(v, ":")
	for k, p := range parts {
		if strings.HasPrefix(p, "/") {
			parts[k] = filepath.Join(i.root, p)
		}
	}
	return strings.Join(parts, ":")
}

func (i *Installer) checkEnv(pkg *ferryv1.Package) []string {
	home := os.Getenv("HOME")
	if home == "" {
		home = "/root"
	}
	env := []string{
		"PATH=" + basePath,
		"HOME=" + home,
		"LANG=C",
		"SHELL=" + i.shell,
		"FERRY_ROOT=" + i.root,
		"FERRY_PACKAGE=" + pkg.GetName(),
		"FERRY_VERSION=" + pkg.GetVersion(),
	}
	if u := os.Getenv("USER"); u != "" {
		env = append(env, "USER="+u, "LOGNAME="+u)
	}
	return env
}

// outputLog keeps the first max bytes of a command's output (stdout and
// stderr together, as the check's expect sees them) and passes each
// stream's complete lines to its own log function as they arrive.
type outputLog struct {
	mu        sync.Mutex
	max       int
	buf       bytes.Buffer
	truncated bool
	streams   []*outputStream
}

// outputStream is one of the command's output streams.
type outputStream struct {
	o    *outputLog
	line []byte
	logf func(string)
}

// maxLogLine is the longest line passed on: a longer one is passed in
// pieces, so one record stays small.
const maxLogLine = 4096

func (o *outputLog) stream(logf func(string)) *outputStream {
	st := &outputStream{o: o, logf: logf}
	o.mu.Lock()
	o.streams = append(o.streams, st)
	o.mu.Unlock()
	return st
}

func (st *outputStream) Write(p []byte) (int, error) {
	o := st.o
	o.mu.Lock()
	defer o.mu.Unlock()
	if room := o.max - o.buf.Len(); room > 0 {
		o.buf.Write(p[:min(room, len(p))])
	}
	if o.buf.Len() >= o.max && len(p) > 0 {
		o.truncated = true
	}
	st.line = append(st.line, p...)
	for {
		k := bytes.IndexByte(st.line, '\n')
		if k < 0 {
			break
		}
		st.logf(string(st.line[:k]))
		st.line = st.line[k+1:]
	}
	for len(st.line) > maxLogLine {
		st.logf(string(st.line[:maxLogLine]))
		st.line = st.line[maxLogLine:]
	}
	return len(p), nil
}

func (o *outputLog) flush() {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, st := range o.streams {
		if len(st.line) > 0 {
			st.logf(string(st.line))
			st.line = nil
		}
	}
}

func (o *outputLog) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	s := o.buf.String()
	if o.truncated {
		s += "\n[output truncated]"
	}
	return s
}
