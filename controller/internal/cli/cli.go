// Package cli is ferryctl, the admin command line. Every command talks to
// the controller's API over mTLS with an admin credential (--config or
// FERRY_CONFIG).
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/status"

	"github.com/ferrydeploy/ferry/controller/internal/credential"
	"github.com/ferrydeploy/ferry/shared/rpc"
	"github.com/ferrydeploy/ferry/shared/version"
)

// app holds what every command shares.
type app struct {
	configPath string
	output     string
	timeout    time.Duration
	stdout     io.Writer
	stderr     io.Writer
	cred       *credential.Credential
	conn       *grpc.ClientConn
	// emitted is set once a YAML document was written, so the next one in
	// a stream is separated by "---".
	emitted bool
}

// ExitError carries a specific exit code (e.g. a failed rollout).
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string { return e.Err.Error() }

// Main runs ferryctl and returns its exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	return Run(context.Background(), args, stdout, stderr)
}

// Run is Main until ctx ends (a watch stops there).
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	a := &app{stdout: stdout, stderr: stderr}
	root := a.rootCmd() //nolint:contextcheck // each command gets ctx from cobra: ExecuteContext below, cmd.Context() in the command
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if a.conn != nil {
		_ = a.conn.Close() // ferryctl exits next; the command's error is what it reports
	}
	if err != nil {
		code := 1
		var ee *ExitError
		if errors.As(err, &ee) {
			code = ee.Code
			err = ee.Err
		}
		if err != nil {
			fmt.Fprintf(stderr, "Error: %s\n", friendly(err))
		}
		return code
	}
	return 0
}

// friendly strips gRPC's "rpc error: code = X desc =" wrapper: the
// controller's messages already name the thing and the fix.
func friendly(err error) string {
	if s, ok := status.FromError(err); ok {
		return s.Message()
	}
	return err.Error()
}

func defaultConfig() string {
	if p := os.Getenv("FERRY_CONFIG"); p != "" {
		return p
	}
	if home, err := os.UserHomeDir(); err == nil {
		p := filepath.Join(home, ".config", "ferry", "admin.yaml")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return "/etc/ferry/admin.yaml"
}

func (a *app) rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:          "ferryctl",
		Short:        "ferryctl controls a Ferry fleet: nodes, tokens, artifacts, packages and rollouts",
		SilenceUsage: true,
		// Every command takes -o; an unsupported value is refused up front
		// rather than silently printing a table.
		PersistentPreRunE: func(*cobra.Command, []string) error { return a.checkOutput() },
		SilenceErrors:     true,
		Version:           version.String("ferryctl"),
	}
	root.SetVersionTemplate("{{.Version}}\n")
	root.PersistentFlags().StringVar(&a.configPath, "config", defaultConfig(), "admin credential file (env FERRY_CONFIG)")
	root.PersistentFlags().StringVarP(&a.output, "output", "o", "table", "output format: table, wide (more columns), json or yaml")
	root.PersistentFlags().DurationVar(&a.timeout, "timeout", 30*time.Second, "time limit for each request")
	root.AddCommand(a.nodesCmd(), a.nodeCmd(), a.tokenCmd(), a.certCmd(), a.auditCmd(), a.versionCmd())
	root.AddCommand(a.packageCmd(), a.rolloutCmd(), a.logsCmd(), a.artifactCmd())
	root.AddCommand(a.gossipCmd(), a.groupCmd(), a.mirrorCmd())
	// cobra adds these when it runs; added now, they are held to the same
	// rules (an unknown `ferryctl completion x` is an error too).
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	strictCommands(root)
	a.addCompletions(root)
	return root
}

// strictCommands makes every command that has subcommands refuse an
// unknown one with exit 1 and a "did you mean" (cobra checks only at the
// root, and a nested group would print its help and exit 0). A group run
// alone prints its help.
func strictCommands(c *cobra.Command) {
	for _, sub := range c.Commands() {
		switch sub.Name() {
		case "list":
			sub.SuggestFor = append(sub.SuggestFor, "ls")
		case "remove", "rm":
			sub.SuggestFor = append(sub.SuggestFor, "rm", "delete", "del")
		case "show", "inspect":
			sub.SuggestFor = append(sub.SuggestFor, "get", "describe")
		}
		strictCommands(sub)
	}
	if !c.HasSubCommands() {
		return
	}
	c.SuggestionsMinimumDistance = 2 // cobra sets it only on its own path
	if !c.Runnable() {
		c.Args = unknownCommand
		c.RunE = func(cmd *cobra.Command, _ []string) error { return cmd.Help() }
		return
	}
	own := c.Args
	c.Args = func(cmd *cobra.Command, args []string) error {
		if own == nil {
			return nil
		}
		if err := own(cmd, args); err != nil {
			if len(args) > 0 {
				return unknownCommand(cmd, args)
			}
			return err
		}
		return nil
	}
}

// unknownCommand refuses the first argument as a subcommand of cmd, with
// the closest names.
func unknownCommand(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
	var s []string
	for _, name := range cmd.SuggestionsFor(args[0]) {
		if !slices.Contains(s, name) { // a close name that also lists the word in SuggestFor
			s = append(s, name)
		}
	}
	if len(s) > 0 {
		return fmt.Errorf("%s; did you mean %s?", msg, quotedList(s, cmd.CommandPath()))
	}
	return fmt.Errorf("%s; run '%s --help' to list its commands", msg, cmd.CommandPath())
}

// quotedList is "'a b'", "'a b' or 'a c'", "'a b', 'a c' or 'a d'".
func quotedList(names []string, prefix string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = "'" + prefix + " " + n + "'"
	}
	if len(q) == 1 {
		return q[0]
	}
	return strings.Join(q[:len(q)-1], ", ") + " or " + q[len(q)-1]
}

func (a *app) versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the ferryctl version",
		Args:  cobra.NoArgs,
		Run:   func(*cobra.Command, []string) { fmt.Fprintln(a.stdout, version.String("ferryctl")) },
	}
}

// connect loads the credential and dials the controller (lazily: the
// connection is made by the first RPC).
func (a *app) connect() (*grpc.ClientConn, error) {
	if a.conn != nil {
		return a.conn, nil
	}
	cred, err := credential.Load(a.configPath)
	if err != nil {
		return nil, err
	}
	// One connection attempt may take as long as --timeout, no more: a
	// controller that accepts but never answers the handshake is given up
	// on within the limit the operator set.
	opts := append(rpc.DialOptions(cred.TLS()), grpc.WithConnectParams(grpc.ConnectParams{
		Backoff: backoff.DefaultConfig, MinConnectTimeout: a.timeout,
	}))
	conn, err := grpc.NewClient(cred.Controller, opts...)
	if err != nil {
		return nil, fmt.Errorf("controller %s: %w", cred.Controller, err)
	}
	a.cred, a.conn = cred, conn
	return conn, nil
}

// rpc runs fn with the controller connection and a context bounded by
// --timeout: the frame of every unary call.
func (a *app) rpc(cmd *cobra.Command, fn func(ctx context.Context, conn *grpc.ClientConn) error) error {
	return a.rpcWithin(cmd, a.timeout, fn)
}

// rpcWithin is rpc with another time limit.
func (a *app) rpcWithin(cmd *cobra.Command, limit time.Duration, fn func(ctx context.Context, conn *grpc.ClientConn) error) error {
	conn, err := a.connect()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), limit)
	defer cancel()
	return a.reach(fn(ctx, conn), limit)
}

// call makes one unary RPC within --timeout. newClient is the service's
// generated constructor and method the RPC as a method expression, e.g.
//
//	resp, err := call(a, cmd, ferryv1.NewTokenServiceClient, ferryv1.TokenServiceClient.ListTokens, req)
func call[C, Req, Resp any](a *app, cmd *cobra.Command, newClient func(grpc.ClientConnInterface) C,
	method func(C, context.Context, *Req, ...grpc.CallOption) (*Resp, error), req *Req) (*Resp, error) {
	var resp *Resp
	err := a.rpc(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
		var err error
		resp, err = method(newClient(conn), ctx, req)
		return err
	})
	return resp, err
}

// printTable writes a header and one row per item as aligned columns.
func printTable[T any](a *app, header []string, items []T, row func(T) []string) error {
	w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, strings.Join(header, "\t"))
	for _, it := range items {
		fmt.Fprintln(w, strings.Join(row(it), "\t"))
	}
	return w.Flush()
}

// age formats a duration the way kubectl does: 5s, 3m, 2h, 4d.
func age(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

func orDash(s string) string {
	if strings.TrimSpace(s) == "" {
		return "-"
	}
	return s
}
