package install

import "fmt"

// undoAction reverts one journaled change, from whatever point it reached,
// with the kind that made it. It is idempotent: running it twice, or after
// a crash inside it, is safe.
func (i *Installer) undoAction(a *action) error {
	u, ok := i.undoer(a.Kind)
	err := fmt.Errorf("unknown action kind %q", a.Kind)
	if ok {
		err = u.Undo(undoRequest{change: a})
	}
	if err != nil {
		return fmt.Errorf("undo %s: %w", a.Target, err)
	}
	removeCreated(a.Created)
	return nil
}
