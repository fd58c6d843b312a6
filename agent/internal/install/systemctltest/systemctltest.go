// Package systemctltest is a stand-in for systemctl that tests put on an
// agent's PATH, so service steps run without systemd. It is a shell
// script keeping the unit's state in files beside it; it records every
// call, answers is-active and is-enabled, and behaves like a service that
// reads a config file: started with a file lacking the expected text, it
// never becomes active (it stays "activating", or whatever SetBadState
// says), the way a daemon with a broken config loops in its restarts.
package systemctltest

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// script is the stub. $1 is the verb; the unit follows "--".
const script = `#!/bin/sh
d=$(dirname "$0")
printf '%s\n' "$*" >> "$d/calls"
verb=$1
state() { cat "$d/active" 2>/dev/null || echo inactive; }
started() {
	if [ -f "$d/watch" ]; then
		path=$(sed -n 1p "$d/watch"); want=$(sed -n 2p "$d/watch")
		if ! grep -qF -- "$want" "$path" 2>/dev/null; then
			if [ -f "$d/bad-state" ]; then cat "$d/bad-state" > "$d/active"; else echo activating > "$d/active"; fi
			return 0
		fi
	fi
	echo active > "$d/active"
}
case "$verb" in
is-active) s=$(state); echo "$s"; [ "$s" = active ] ;;
is-enabled) s=$(cat "$d/enabled" 2>/dev/null || echo disabled); echo "$s"; [ "$s" = enabled ] ;;
enable) echo enabled > "$d/enabled"; echo "Created symlink (stub)." ;;
disable) echo disabled > "$d/enabled"; echo "Removed symlink (stub)." ;;
stop) echo inactive > "$d/active" ;;
start|restart) started ;;
reload) [ "$(state)" = active ] || { echo "Job for unit failed: not active (stub)" >&2; exit 1; }; started ;;
status) echo "stub unit: $(state)"; [ "$(state)" = active ] || exit 3 ;;
*) echo "stub systemctl: unknown verb $verb" >&2; exit 1 ;;
esac
`

// Stub is one stub systemctl in a directory of its own.
type Stub struct{ dir string }

// New writes the stub into dir (created if needed) as dir/systemctl; put
// dir first on the agent's PATH. The unit starts inactive and disabled.
func New(dir string) (*Stub, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "systemctl"), []byte(script), 0o755); err != nil {
		return nil, err
	}
	return &Stub{dir: dir}, nil
}

// Dir is the directory to put on PATH.
func (s *Stub) Dir() string { return s.dir }

// SetActive sets what is-active answers now ("active", "inactive", ...).
func (s *Stub) SetActive(word string) error { return s.write("active", word) }

// SetEnabled sets what is-enabled answers now ("enabled", "disabled").
func (s *Stub) SetEnabled(word string) error { return s.write("enabled", word) }

// Watch makes start, restart and reload leave the unit active only when
// the file at path contains want.
func (s *Stub) Watch(path, want string) error { return s.write("watch", path+"\n"+want) }

// SetBadState is the state a start with a bad config leaves ("failed";
// default "activating", which never ends).
func (s *Stub) SetBadState(word string) error { return s.write("bad-state", word) }

// Active is what is-active would answer.
func (s *Stub) Active() string {
	b, err := os.ReadFile(filepath.Join(s.dir, "active"))
	if err != nil {
		return "inactive"
	}
	return strings.TrimSpace(string(b))
}

// Calls lists the argument lists it was called with, one string each,
// e.g. "restart -- myapp.service".
func (s *Stub) Calls() ([]string, error) {
	b, err := os.ReadFile(filepath.Join(s.dir, "calls"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n"), nil
}

// Actions is Calls without the queries (is-active, is-enabled, status):
// what changed the unit.
func (s *Stub) Actions() ([]string, error) {
	calls, err := s.Calls()
	var out []string
	for _, c := range calls {
		if !strings.HasPrefix(c, "is-") && !strings.HasPrefix(c, "status") {
			out = append(out, c)
		}
	}
	return out, err
}

func (s *Stub) write(name, v string) error {
	if err := os.WriteFile(filepath.Join(s.dir, name), []byte(v+"\n"), 0o644); err != nil {
		return fmt.Errorf("stub systemctl: %w", err)
	}
	return nil
}
