package controller

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ferrydeploy/ferry/controller/internal/etcdclient"
	"github.com/ferrydeploy/ferry/controller/internal/store"
	"github.com/ferrydeploy/ferry/shared/daemonconfig"
)

// migrateCmd is `ferry-controller migrate --from bbolt:PATH --to
// etcd:ENDPOINTS`: it copies a stopped controller's store into an empty
// etcd prefix and then reads both back, record by record.
func migrateCmd(stdout io.Writer) *cobra.Command {
	var from, to string
	var overwrite bool
	var ec etcdclient.Config
	c := &cobra.Command{
		Use:   "migrate",
		Short: "Copy a bbolt store into etcd and check the copy record by record",
		Long: `migrate copies every record of a bbolt store (a stopped controller's
ferry.db, or its data dir) into an etcd prefix with no store in it, then
reads both back and compares them record by record. It prints the records
copied per domain and "migrate check: N records identical", or names each
record that differs and exits 1. Then start the controllers with
--store etcd and the same --etcd-* settings (docs/operations.md).`,
		Example: `  ferry-controller migrate --from bbolt:/var/lib/ferry-controller --to etcd:https://10.0.0.1:2379,https://10.0.0.2:2379 \
    --etcd-ca /etc/ferry/etcd-ca.crt --etcd-cert /etc/ferry/etcd-client.crt --etcd-key /etc/ferry/etcd-client.key`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path, ok := strings.CutPrefix(from, "bbolt:")
			if !ok || path == "" {
				return daemonconfig.Usage(fmt.Errorf("migrate: --from must be bbolt:PATH (a data dir or its %s), got %q", storeFile, from))
			}
			eps, ok := strings.CutPrefix(to, "etcd:")
			if !ok || eps == "" {
				return daemonconfig.Usage(fmt.Errorf("migrate: --to must be etcd:ENDPOINT[,ENDPOINT...], got %q", to))
			}
			ec.Endpoints = strings.Split(eps, ",")
			if err := migrate(cmd.Context(), path, ec, overwrite, stdout); err != nil {
				return fmt.Errorf("migrate: %w", err)
			}
			return nil
		},
	}
	c.Flags().StringVar(&from, "from", "", "the store to copy: bbolt:PATH, PATH a stopped controller's data dir or its "+storeFile+" (required)")
	c.Flags().StringVar(&to, "to", "", "where to copy it: etcd:ENDPOINT[,ENDPOINT...] (required)")
	c.Flags().StringVar(&ec.CA, "etcd-ca", "", "PEM file of the CA that signed etcd's serving certificates")
	c.Flags().StringVar(&ec.Cert, "etcd-cert", "", "PEM client certificate to present to etcd (with --etcd-key)")
	c.Flags().StringVar(&ec.Key, "etcd-key", "", "PEM key of --etcd-cert")
	c.Flags().StringVar(&ec.Prefix, "etcd-prefix", etcdclient.DefaultPrefix, "key prefix to copy the store under; the controllers' --etcd-prefix")
	c.Flags().BoolVar(&overwrite, "overwrite", false, "delete whatever the prefix holds before copying (default: a prefix with records is refused)")
	return c
}

// migrateDiffs bounds how many differing records migrate names.
const migrateDiffs = 20

func migrate(ctx context.Context, path string, ec etcdclient.Config, overwrite bool, stdout io.Writer) error {
	if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		path = filepath.Join(path, storeFile)
	}
	// Open, not read-only: a store of an older record format is brought
	// to the current one first, as the controller would on start. A
	// running controller holds the file locked: that is refused.
	src, err := store.Open(path, store.Options{})
	if err != nil {
		if errors.Is(err, store.ErrLocked) {
			return fmt.Errorf("%w: stop the controller before migrating its store", err)
		}
		return err
	}
	defer func() { _ = src.Close() }()
	cli, err := etcdclient.New(ctx, ec)
	if err != nil {
		return err
	}
	defer func() { _ = cli.Close() }()
	prefix := ec.KeyPrefix()
	where := fmt.Sprintf("etcd prefix %s at %s", prefix, strings.Join(ec.Endpoints, ","))
	if overwrite {
		if err := deletePrefix(ctx, cli, prefix, ec.Endpoints); err != nil {
			return err
		}
	}
	dst, err := store.OpenEtcd(cli, prefix) //nolint:contextcheck // the store bounds each etcd request itself (etcdOpTimeout)
	if err != nil {
		return err
	}
	defer func() { _ = dst.Close() }()
	empty, err := dst.Empty()
	if err != nil {
		return err
	}
	if !empty {
		counts, _ := dst.Count()
		return fmt.Errorf("%s already holds a store (%s): migrate into an empty prefix (another --etcd-prefix), or pass --overwrite to delete what it holds first", where, counts)
	}
	counts, err := src.CopyInto(dst)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "copied %s to %s:\n", path, where)
	for _, c := range counts {
		fmt.Fprintf(stdout, "  %-15s %d\n", c.Domain+":", c.Records)
	}
	identical, diffs, err := store.Compare(src, dst, migrateDiffs)
	if err != nil {
		return fmt.Errorf("check the copy: %w", err)
	}
	if len(diffs) > 0 {
		for _, d := range diffs {
			fmt.Fprintf(stdout, "  %s\n", d)
		}
		return fmt.Errorf("migrate check: %d records identical, %d differ (above); the copy in %s is not to be used: run migrate again with --overwrite", identical, len(diffs), where)
	}
	fmt.Fprintf(stdout, "migrate check: %d records identical\n", identical)
	fmt.Fprintf(stdout, "start the controllers with --store etcd --etcd-endpoints %s --etcd-prefix %s (and the same --etcd-ca/--etcd-cert/--etcd-key); keep %s as the backup of the moment of the copy\n", strings.Join(ec.Endpoints, ","), prefix, path)
	return nil
}

// deletePrefix removes every key under prefix.
func deletePrefix(ctx context.Context, cli *clientv3.Client, prefix string, endpoints []string) error {
	if _, err := cli.Delete(ctx, prefix+"/", clientv3.WithPrefix()); err != nil {
		return fmt.Errorf("delete what etcd at %s holds under %s: %w", strings.Join(endpoints, ","), prefix, err)
	}
	return nil
}
