package controller

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/ferrydeploy/ferry/controller/internal/store"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/rpc"
)

func adminConn(t *testing.T, c *Controller) *grpc.ClientConn {
	t.Helper()
	tlsConf, err := c.AdminTLS()
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(c.GRPCAddr(), rpc.DialOptions(tlsConf)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// main runs the ferry-controller command line.
func main(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = Main(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func createToken(t *testing.T, conn *grpc.ClientConn, group string) string {
	t.Helper()
	resp, err := ferryv1.NewTokenServiceClient(conn).CreateToken(context.Background(), &ferryv1.CreateTokenRequest{Group: group})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetToken().GetId()
}

// A backup taken while the controller runs, restored into its data dir,
// brings back every record it held at that moment, and only those.
func TestBackupWhileRunningThenRestore(t *testing.T) {
	dir := t.TempDir()
	backup := filepath.Join(t.TempDir(), "ferry-backup.db")
	c, stop := start(t, testConfig(dir))
	conn := adminConn(t, c)
	ctx := context.Background()
	tokens := []string{createToken(t, conn, "production"), createToken(t, conn, "staging")}
	if _, err := ferryv1.NewPackageServiceClient(conn).ApplyPackage(ctx, &ferryv1.ApplyPackageRequest{
		Filename: "motd.yaml", Yaml: "name: motd\nversion: \"1\"\nsteps:\n  - check: {run: \"true\"}\n",
	}); err != nil {
		t.Fatal(err)
	}
	enrolled := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	if err := c.store.PutNode(store.NodeRecord{ID: "web-01", Group: "production", EnrolledAt: enrolled, TokenID: tokens[0], CertSerials: []string{"1f"}}, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.store.SaveRollout(&ferryv1.Rollout{Id: "ro-1", PackageName: "motd", PackageVersion: "1", State: ferryv1.RolloutState_ROLLOUT_STATE_SUCCEEDED}, nil); err != nil {
		t.Fatal(err)
	}

	code, out, errOut := main(t, "backup", "--data-dir", dir, "--out", backup)
	if code != 0 {
		t.Fatalf("backup while running: exit %d: %s", code, errOut)
	}
	for _, want := range []string{backup, "from the running controller", "1 node", "2 tokens", "1 package", "1 rollout"} {
		if !strings.Contains(out, want) {
			t.Errorf("backup output does not say %q: %s", want, out)
		}
	}
	createToken(t, conn, "after-the-backup")

	// The running controller holds the data dir: restore names it.
	if code, _, errOut := main(t, "restore", "--data-dir", dir, "--from", backup); code != 1 || !strings.Contains(errOut, fmt.Sprintf("in use by process %d", os.Getpid())) || !strings.Contains(errOut, "stop that one") {
		t.Errorf("restore while running: exit %d: %s; want a refusal naming process %d", code, errOut, os.Getpid())
	}
	stop()
	if _, err := os.Stat(filepath.Join(dir, backupSocket)); !os.IsNotExist(err) {
		t.Errorf("the backup socket outlived the controller (%v)", err)
	}
	code, out, errOut = main(t, "restore", "--data-dir", dir, "--from", backup)
	if code != 0 || !strings.Contains(out, "2 tokens") || !strings.Contains(out, "kept as "+filepath.Join(dir, "ferry.db.replaced-")) {
		t.Fatalf("restore: exit %d: %s%s", code, out, errOut)
	}

	c, stop = start(t, testConfig(dir))
	gotTokens, err := c.store.Tokens()
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, tok := range gotTokens {
		ids = append(ids, tok.ID)
	}
	if len(ids) != 2 || !strings.Contains(strings.Join(ids, " "), tokens[0]) || !strings.Contains(strings.Join(ids, " "), tokens[1]) {
		t.Errorf("tokens after restore = %v, want %v", ids, tokens)
	}
	if nodes, err := c.store.Nodes(); err != nil || len(nodes) != 1 || nodes[0].ID != "web-01" || !nodes[0].EnrolledAt.Equal(enrolled) {
		t.Errorf("nodes after restore = %+v, %v", nodes, err)
	}
	if n, ok := c.fleet.Node("web-01"); !ok || n.GetGroup() != "production" {
		t.Errorf("the restarted controller does not know web-01: %v", n)
	}
	if p, err := c.packages.Package("motd", "1"); err != nil || p.GetCreatedBy() != "admin/admin" {
		t.Errorf("package after restore = %v, %v", p, err)
	}
	if r, err := ferryv1.NewRolloutServiceClient(adminConn(t, c)).GetRollout(ctx, &ferryv1.GetRolloutRequest{Id: "ro-1"}); err != nil || r.GetRollout().GetState() != ferryv1.RolloutState_ROLLOUT_STATE_SUCCEEDED {
		t.Errorf("rollout after restore = %v, %v", r, err)
	}
	stop()

	// With the controller stopped, backup reads the file itself.
	code, out, errOut = main(t, "backup", "--data-dir", dir, "--out", backup)
	if code != 0 || !strings.Contains(out, "from the stopped controller's store") || !strings.Contains(out, "2 tokens") {
		t.Errorf("backup while stopped: exit %d: %s%s", code, out, errOut)
	}
}

func TestBackupAndRestoreCommandLine(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"backup", "--data-dir", dir}, 2, "--out FILE is required"},
		{[]string{"restore", "--data-dir", dir}, 2, "--from FILE is required"},
		{[]string{"backup", "--data-dir", dir, "--out", filepath.Join(dir, "b.db")}, 1, filepath.Join(dir, "ferry.db") + " does not exist"},
		{[]string{"restore", "--data-dir", dir, "--from", filepath.Join(dir, "nothing.db")}, 1, "backup " + filepath.Join(dir, "nothing.db") + " cannot be restored"},
		{[]string{"backup", "extra"}, 2, "takes no arguments"},
	}
	for _, tc := range cases {
		code, _, errOut := main(t, tc.args...)
		if code != tc.code || !strings.Contains(errOut, tc.want) {
			t.Errorf("ferry-controller %s: exit %d: %s; want %d and %q", strings.Join(tc.args, " "), code, errOut, tc.code, tc.want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "b.db")); !os.IsNotExist(err) {
		t.Errorf("a failed backup left its output file (%v)", err)
	}
}
