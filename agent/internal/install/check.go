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

// stepCheck runs a check command in a login-like environment: the
// package's env files sourced, a clean base environment, the install root
// as working directory. See the package comment for how a non-"/" root
// is handled.
func (i *Installer) stepCheck(jc *jobCtx, s *ferryv1.CheckStep) (stepOut, error) {
	if jc.plan {
		return stepOut{detail: "would run " + s.GetRun()}, nil
	}
	timeout := s.GetTimeout().AsDuration()
	if timeout <= 0 {
		timeout = defaultCheckTimeout
	}
	var script strings.Builder
	for k, e := range jc.envs {
		p, err := i.envFileForCheck(jc, k, e)
		if err != nil {
			return stepOut{}, err
		}
		fmt.Fprintf(&script, ". %s\n", shellQuote(p))
	}
	script.WriteString(s.GetRun())
	script.WriteByte('\n')

	ctx, cancel := context.WithTimeout(jc.ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, i.shell, "-c", script.String())
	cmd.Dir = i.root
	cmd.Env = i.checkEnv(jc.pkg)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		// The whole process group: a check's children must not outlive it.
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	cmd.WaitDelay = 2 * time.Second
	out := &outputLog{max: maxCheckOutput, logf: jc.logf}
	cmd.Stdout, cmd.Stderr = out, out
	err := cmd.Run()
	out.flush()
	output := out.String()
	switch {
	case ctx.Err() != nil && jc.ctx.Err() == nil:
		return stepOut{output: output}, fmt.Errorf("check %q timed out after %v", s.GetRun(), timeout)
	case jc.ctx.Err() != nil:
		return stepOut{output: output}, jc.ctx.Err()
	case err != nil:
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return stepOut{output: output}, fmt.Errorf("check %q exited with status %d: %s", s.GetRun(), ee.ExitCode(), lastLine(output))
		}
		return stepOut{output: output}, fmt.Errorf("check %q: %w", s.GetRun(), err)
	case s.GetExpect() != "" && !strings.Contains(output, s.GetExpect()):
		return stepOut{output: output}, fmt.Errorf("check %q: output does not contain %q: %s", s.GetRun(), s.GetExpect(), lastLine(output))
	}
	detail := "passed"
	if s.GetExpect() != "" {
		detail = fmt.Sprintf("passed (output contains %q)", s.GetExpect())
	}
	return stepOut{detail: detail, output: output}, nil
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

// envFileForCheck returns the env file a check sources: the installed file
// under "/", a copy with paths mapped under the root otherwise.
func (i *Installer) envFileForCheck(jc *jobCtx, k int, e *ferryv1.EnvStep) (string, error) {
	if i.root == "/" {
		return i.resolve("/etc/profile.d/" + e.GetName() + ".sh")
	}
	p := filepath.Join(i.dir, "tmp", fmt.Sprintf("%s-env-%d.sh", jc.key, k))
	if err := os.WriteFile(p, renderEnv(jc.pkg.GetName(), e, i.mapUnderRoot), 0o644); err != nil {
		return "", fmt.Errorf("prepare env for the check: %w", err)
	}
	return p, nil
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

// outputLog keeps the first max bytes of a command's output and passes
// complete lines to logf as they arrive.
type outputLog struct {
	mu        sync.Mutex
	max       int
	buf       bytes.Buffer
	truncated bool
	line      []byte
	logf      func(string)
}

func (o *outputLog) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if room := o.max - o.buf.Len(); room > 0 {
		o.buf.Write(p[:min(room, len(p))])
	}
	if o.buf.Len() >= o.max && len(p) > 0 {
		o.truncated = true
	}
	o.line = append(o.line, p...)
	for {
		k := bytes.IndexByte(o.line, '\n')
		if k < 0 {
			break
		}
		o.logf(string(o.line[:k]))
		o.line = o.line[k+1:]
	}
	if len(o.line) > 4096 {
		o.logf(string(o.line))
		o.line = o.line[:0]
	}
	return len(p), nil
}

func (o *outputLog) flush() {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.line) > 0 {
		o.logf(string(o.line))
		o.line = nil
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
