package controller

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/ferrydeploy/ferry/controller/internal/store"
	"github.com/ferrydeploy/ferry/shared/atomicfile"
	"github.com/ferrydeploy/ferry/shared/daemonconfig"
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
	if c.store.OnEtcd() {
		return func() {} // etcd's own snapshots back it up (store.ErrEtcdBackup)
	}
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

// fileCommand is what backup and restore share: --data-dir, which
// controller.yaml may set (--config), and a required file flag.
type fileCommand struct {
	o    options
	file string
}

func (f *fileCommand) cmd(use, short, fileFlag, fileUsage string, run func(dataDir, file string) error) *cobra.Command {
	c := &cobra.Command{
		Use:   use,
		Short: short,
		Args: func(_ *cobra.Command, a []string) error {
			if len(a) > 0 {
				return daemonconfig.Usage(fmt.Errorf("%s takes no arguments, got %q", use, a))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.file == "" {
				return daemonconfig.Usage(fmt.Errorf("%s: --%s FILE is required", use, fileFlag))
			}
			// Only data-dir: the other keys of controller.yaml are the
			// daemon's and known to it.
			var all options
			known := pflag.NewFlagSet("", pflag.ContinueOnError)
			all.define(known)
			if err := daemonconfig.Load(f.o.configPath, cmd.Flags().Changed("config"), cmd.Flags(), func(k string) bool { return known.Lookup(k) != nil }); err != nil {
				return daemonconfig.Usage(err)
			}
			if f.o.cfg.Store.Backend == StoreEtcd {
				return fmt.Errorf("%s: %w", use, errEtcdStore(use))
			}
			if err := run(f.o.cfg.DataDir, f.file); err != nil {
				return fmt.Errorf("%s: %w", use, err)
			}
			return nil
		},
	}
	c.Flags().StringVar(&f.o.configPath, "config", defaultConfig, "config file whose data-dir is used unless --data-dir is given")
	c.Flags().StringVar(&f.o.cfg.DataDir, "data-dir", defaultDataDir, "the controller's data dir")
	c.Flags().StringVar(&f.file, fileFlag, "", fileUsage+" (required)")
	f.o.cfg.Store.Backend = StoreBbolt
	c.Flags().Var(daemonconfig.ChoiceValue{S: &f.o.cfg.Store.Backend, Choices: []string{StoreBbolt, StoreEtcd}}, "store", "the controller's store (controller.yaml's store key): backup and restore copy a bbolt store; an etcd store is backed up with etcdctl")
	return c
}

// errEtcdStore is what backup and restore say about a store in etcd.
func errEtcdStore(use string) error {
	if use == "restore" {
		return errors.New("the store is kept in etcd: restore etcd itself with `etcdutl snapshot restore FILE` on each member (docs/operations.md, \"The store\"); the data dirs hold only the CA and artifacts")
	}
	return store.ErrEtcdBackup
}

// backupCmd is `ferry-controller backup`.
func backupCmd(stdout io.Writer) *cobra.Command {
	return (&fileCommand{}).cmd("backup", "Copy the store to a file, also while the controller runs", "out", "file to write the backup to", func(dataDir, out string) error {
		source, size, counts, err := backupTo(dataDir, out)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "wrote %s (%d bytes, %s): %s\n", out, size, source, counts)
		return nil
	})
}

// restoreCmd is `ferry-controller restore`.
func restoreCmd(stdout io.Writer) *cobra.Command {
	return (&fileCommand{}).cmd("restore", "Replace the stopped controller's store with a backup", "from", "backup file written by ferry-controller backup", func(dataDir, from string) error {
		if err := os.MkdirAll(dataDir, 0o700); err != nil { // a new host's empty data dir
			return fmt.Errorf("create data dir: %w", err)
		}
		lock, err := lockDataDir(dataDir)
		if err != nil {
			return err
		}
		defer func() { _ = lock.Release() }() // the process ends next
		path := filepath.Join(dataDir, storeFile)
		kept, counts, err := store.Restore(from, path, time.Now())
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "restored %s from %s: %s\n", path, from, counts)
		if kept != "" {
			fmt.Fprintf(stdout, "the store it replaced is kept as %s\n", kept)
		}
		fmt.Fprintln(stdout, "start the controller; what changed after the backup was taken is not in it (docs/operations.md says what to redo)")
		return nil
	})
}
