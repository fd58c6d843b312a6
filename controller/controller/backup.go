package controller

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/ferrydeploy/ferry/controller/internal/store"
	"github.com/ferrydeploy/ferry/shared/atomicfile"
)

// A running controller holds bbolt's exclusive lock on ferry.db, so no
// other process can open it, not even to read. It therefore serves
// consistent copies itself (store.Backup: one read transaction, writes
// carry on) over HTTP on a Unix socket in the data dir. Only who may use
// the data dir can connect (the socket is 0600), which is who could read
// ferry.db anyway; nothing listens on the network. When no controller
// answers, `ferry-controller backup` opens the stopped store read-only.
const (
	backupSocket = "backup.sock"
	backupURL    = "http://ferry-controller/ferry.db" // the host is not used
)

// serveBackups listens on the backup socket until stop is called. A data
// dir whose socket path is too long for a Unix socket only loses backups
// while running: that is logged, not fatal.
func (c *Controller) serveBackups(ctx context.Context) (stop func()) {
	path := filepath.Join(c.cfg.DataDir, backupSocket)
	// A socket left by a crash: no other controller uses this data dir,
	// since this one holds the store's lock.
	_ = os.Remove(path) // a path Listen cannot use is reported below
	lis, err := net.Listen("unix", path)
	if err == nil {
		err = os.Chmod(path, 0o600)
	}
	if err != nil {
		c.log.Warn("cannot serve backups; `ferry-controller backup` works only while the controller is stopped", "socket", path, "err", err)
		if lis != nil {
			_ = lis.Close() // the error that matters is logged above
		}
		return func() {}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ferry.db", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		n, err := c.store.Backup(w)
		if err != nil {
			c.log.Error("backup failed", "err", err)
			// The status is sent already; cutting the connection is how
			// the client learns the copy is incomplete.
			panic(http.ErrAbortHandler)
		}
		c.log.Info("store backed up", "bytes", n)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			c.log.Warn("stopped serving backups; `ferry-controller backup` works only while the controller is stopped", "socket", path, "err", err)
		}
	}()
	return func() {
		// The controller is stopping, ctx is done: the shutdown gets its own time.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if srv.Shutdown(ctx) != nil {
			_ = srv.Close() // ends a backup still streaming, so the store can close
		}
	}
}

// errNoController: nothing answers on the backup socket.
var errNoController = errors.New("no controller answers")

type dialError struct{ err error }

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// backupTo writes a copy of dataDir's store to out, from the running
// controller or, when none runs, from the file. The copy is opened as a
// store before it replaces out, so out only ever holds a sound backup.
func backupTo(dataDir, out string) (source string, size int64, counts store.Counts, err error) {
	err = atomicfile.Write(out, 0o600, func(w io.Writer) error {
		source, size, err = copyStore(dataDir, w)
		return err
	}, func(tmp string) error {
		s, err := store.OpenReadOnly(tmp)
		if err != nil {
			return fmt.Errorf("the copy does not open as a store, %s was not written: %w", out, err)
		}
		defer func() { _ = s.Close() }() // read-only: nothing to flush
		counts, err = s.Count()
		return err
	})
	return source, size, counts, err
}

func copyStore(dataDir string, w io.Writer) (source string, size int64, err error) {
	sock := filepath.Join(dataDir, backupSocket)
	size, err = fetchBackup(sock, w)
	if !errors.Is(err, errNoController) {
		return "from the running controller", size, err
	}
	path := filepath.Join(dataDir, storeFile)
	s, err := store.OpenReadOnly(path)
	if errors.Is(err, store.ErrLocked) {
		return "", 0, fmt.Errorf("store %s is locked by a running ferry-controller that does not serve backups on %s; stop it and run the backup again", path, sock)
	}
	if err != nil {
		return "", 0, err
	}
	defer func() { _ = s.Close() }() // read-only: nothing to flush
	size, err = s.Backup(w)
	return "from the stopped controller's store", size, err
}

// fetchBackup streams a backup from the controller serving sock into w.
// It fails with errNoController, having written nothing, when none does.
func fetchBackup(sock string, w io.Writer) (int64, error) {
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			conn, err := d.DialContext(ctx, "unix", sock)
			if err != nil {
				return nil, &dialError{err}
			}
			return conn, nil
		},
	}}
	defer client.CloseIdleConnections()
	resp, err := client.Get(backupURL)
	var de *dialError
	switch {
	case errors.As(err, &de) && (errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED)):
		return 0, errNoController
	case err != nil:
		return 0, fmt.Errorf("ask the controller on %s for a backup: %w", sock, err)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return 0, fmt.Errorf("the controller on %s refused the backup: %s %s", sock, resp.Status, msg)
	}
	n, err := io.Copy(w, resp.Body)
	if err != nil {
		return n, fmt.Errorf("the backup from the controller on %s broke off after %d bytes: %w", sock, n, err)
	}
	return n, nil
}

// backupMain is `ferry-controller backup`.
func backupMain(args []string, stdout, stderr io.Writer) int {
	dataDir, out, code, done := parseFileCommand("backup", "out", "file to write the backup to", args, stderr)
	if done {
		return code
	}
	source, size, counts, err := backupTo(dataDir, out)
	if err != nil {
		fmt.Fprintf(stderr, "ferry-controller backup: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "wrote %s (%d bytes, %s): %s\n", out, size, source, counts)
	return 0
}

// restoreMain is `ferry-controller restore`.
func restoreMain(args []string, stdout, stderr io.Writer) int {
	dataDir, from, code, done := parseFileCommand("restore", "from", "backup file written by `ferry-controller backup`", args, stderr)
	if done {
		return code
	}
	path := filepath.Join(dataDir, storeFile)
	kept, counts, err := store.Restore(from, path, time.Now())
	if err != nil {
		fmt.Fprintf(stderr, "ferry-controller restore: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "restored %s from %s: %s\n", path, from, counts)
	if kept != "" {
		fmt.Fprintf(stdout, "the store it replaced is kept as %s\n", kept)
	}
	fmt.Fprintln(stdout, "start the controller; what changed after the backup was taken is not in it (docs/operations.md says what to redo)")
	return 0
}

// parseFileCommand parses the flags both commands take: --data-dir and
// the required file flag. done is true when the command should exit with
// code.
func parseFileCommand(name, fileFlag, fileUsage string, args []string, stderr io.Writer) (dataDir, file string, code int, done bool) {
	fs := flag.NewFlagSet("ferry-controller "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&dataDir, "data-dir", defaultDataDir, "the controller's data dir")
	fs.StringVar(&file, fileFlag, "", fileUsage+" (required)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return "", "", 0, true
		}
		return "", "", 2, true
	}
	switch {
	case fs.NArg() > 0:
		fmt.Fprintf(stderr, "%s takes no arguments, got %q\n", fs.Name(), fs.Args())
		return "", "", 2, true
	case file == "":
		fmt.Fprintf(stderr, "%s: --%s FILE is required\n", fs.Name(), fileFlag)
		return "", "", 2, true
	}
	return dataDir, file, 0, false
}
