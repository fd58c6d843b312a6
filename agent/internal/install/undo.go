package install

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/ferrydeploy/ferry/shared/atomicfile"
)

// applyTree switches a staged tree in (or an installed one out). The
// action is in the journal with its identities before anything moves.
func applyTree(a *action) error {
	switch {
	case a.HasNew && a.HadOld:
		err := exchange(a.Stage, a.Target)
		if errors.Is(err, errExchangeUnsupported) {
			// Two renames; the journal lets a crash between them be undone.
			if err := os.Rename(a.Target, a.Kept); err != nil {
				return fmt.Errorf("move %s aside: %w", a.Target, err)
			}
			if err := os.Rename(a.Stage, a.Target); err != nil {
				return fmt.Errorf("switch %s in: %w", a.Target, err)
			}
		} else if err != nil {
			return err
		} else if err := os.Rename(a.Stage, a.Kept); err != nil {
			return fmt.Errorf("keep the previous %s: %w", a.Target, err)
		}
	case a.HasNew:
		if err := os.Rename(a.Stage, a.Target); err != nil {
			return fmt.Errorf("switch %s in: %w", a.Target, err)
		}
	case a.HadOld:
		if err := os.Rename(a.Target, a.Kept); err != nil {
			return fmt.Errorf("move %s aside: %w", a.Target, err)
		}
	}
	return atomicfile.SyncDir(filepath.Dir(a.Target))
}

// undoAction reverts one action from whatever point it reached. It is
// idempotent: running it twice, or after a crash inside it, is safe.
func undoAction(a *action) error {
	var err error
	switch a.Kind {
	case "tree":
		err = undoTree(a)
	case "file":
		err = undoFile(a)
	default:
		err = fmt.Errorf("unknown action kind %q", a.Kind)
	}
	if err != nil {
		return fmt.Errorf("undo %s: %w", a.Target, err)
	}
	removeCreated(a.Created)
	return nil
}

func undoTree(a *action) error {
	if a.State == "prepared" {
		if !a.Preserve && a.HasNew {
			return os.RemoveAll(a.Stage)
		}
		return nil
	}
	locate := func(id fileID) string {
		for _, p := range []string{a.Target, a.Stage, a.Kept} {
			if got, ok := idOf(p); ok && got == id {
				return p
			}
		}
		return ""
	}
	newAt, oldAt := "", ""
	if a.HasNew {
		newAt = locate(a.NewID)
	}
	if a.HadOld {
		oldAt = locate(a.OldID)
		if oldAt == "" {
			return fmt.Errorf("the previous tree is gone from %s and %s; restore %s by hand", a.Target, a.Kept, a.Target)
		}
	}
	// Make room at the target, swapping when both trees exist so the
	// target is never missing.
	if newAt == a.Target {
		if oldAt != "" {
			err := exchange(oldAt, a.Target)
			if err == nil {
				newAt, oldAt = oldAt, a.Target
			} else if !errors.Is(err, errExchangeUnsupported) {
				return err
			}
		}
		if newAt == a.Target {
			aside := freeName(a.Stage, oldAt)
			if err := os.Rename(a.Target, aside); err != nil {
				return err
			}
			newAt = aside
		}
	}
	if oldAt != "" && oldAt != a.Target {
		if err := makeDirs(missingDirs(filepath.Dir(a.Target)), 0o755); err != nil {
			return err
		}
		if exists(a.Target) {
			return fmt.Errorf("%s is occupied by something Ferry did not put there; move it away and restart the agent", a.Target)
		}
		if err := os.Rename(oldAt, a.Target); err != nil {
			return err
		}
	}
	if newAt != "" && newAt != a.Target {
		if a.Preserve {
			if newAt != a.Stage {
				if err := os.Rename(newAt, a.Stage); err != nil {
					return err
				}
			}
		} else if err := os.RemoveAll(newAt); err != nil {
			return err
		}
	}
	return atomicfile.SyncDir(filepath.Dir(a.Target))
}

// freeName returns p, or a variant of it, that is neither taken nor avoid.
func freeName(p, avoid string) string {
	for n := 0; ; n++ {
		c := p
		if n > 0 {
			c = fmt.Sprintf("%s.%d", p, n)
		}
		if c != avoid && !exists(c) {
			return c
		}
	}
}

func undoFile(a *action) error {
	if a.Temp != "" {
		os.Remove(a.Temp)
	}
	if !a.Existed {
		if err := os.Remove(a.Target); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return atomicfile.SyncDir(filepath.Dir(a.Target))
	}
	data, err := os.ReadFile(a.Backup)
	if err != nil {
		return fmt.Errorf("read the backup of the previous file: %w", err)
	}
	return restoreFile(a, data)
}

// restoreFile writes a file's previous content back through a.Temp, with
// the mode and owner a recorded, recreating missing directories (a
// rollback may have removed those the install had created).
func restoreFile(a *action, data []byte) error {
	if err := makeDirs(missingDirs(filepath.Dir(a.Target)), 0o755); err != nil {
		return err
	}
	uid, gid := a.UID, a.GID
	if os.Geteuid() != 0 {
		uid, gid = -1, -1 // only root can hand files to another owner
	}
	return writeAtomic(a.Target, a.Temp, data, a.Mode, uid, gid)
}
