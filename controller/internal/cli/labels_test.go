package cli

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrydeploy/ferry/controller/internal/credential"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/labels"
	"github.com/ferrydeploy/ferry/shared/pki"
	"github.com/ferrydeploy/ferry/shared/rpc"
)

// dialAdmin connects to the controller with its admin credential, for
// the calls a test makes in an agent's place (enrolling).
func dialAdmin(t *testing.T, cfg string) *grpc.ClientConn {
	t.Helper()
	cred, err := credential.Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(cred.Controller, rpc.DialOptions(cred.TLS())...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// enroller enrolls nodes as ferry-agent enroll does, with one key for all
// of them (the controller signs whatever key the CSR carries).
type enroller struct {
	client ferryv1.EnrollmentServiceClient
	key    crypto.Signer
	csr    []byte
}

func newEnroller(t *testing.T, conn *grpc.ClientConn) *enroller {
	t.Helper()
	key, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := pki.CreateCSR(key, pki.Identity{Role: pki.RoleAgent, Name: "node"})
	if err != nil {
		t.Fatal(err)
	}
	return &enroller{client: ferryv1.NewEnrollmentServiceClient(conn), key: key, csr: csr}
}

func (e *enroller) enroll(token, id string, asked map[string]string) (*ferryv1.EnrollResponse, error) {
	return e.client.Enroll(context.Background(), &ferryv1.EnrollRequest{Token: token, NodeId: id, CsrDer: e.csr, Labels: asked})
}

// dialAgent connects as the enrolled node of resp.
func (e *enroller) dialAgent(t *testing.T, controller string, resp *ferryv1.EnrollResponse) *grpc.ClientConn {
	t.Helper()
	ca, err := x509.ParseCertificate(resp.CaCertificateDer)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	cert := &tls.Certificate{Certificate: [][]byte{resp.CertificateDer}, PrivateKey: e.key}
	conf := rpc.ClientTLS(func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }, roots)
	conn, err := grpc.NewClient(controller, rpc.DialOptions(conf)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// createToken runs `ferryctl token create -o json` with args and returns
// the secret.
func createToken(t *testing.T, cfg string, args ...string) string {
	t.Helper()
	code, out, errOut := run(t, cfg, append([]string{"-o", "json", "token", "create"}, args...)...)
	if code != 0 {
		t.Fatalf("token create %v: exit %d: %s", args, code, errOut)
	}
	var resp struct {
		Secret string `json:"secret"`
	}
	if err := json.Unmarshal([]byte(out), &resp); err != nil || resp.Secret == "" {
		t.Fatalf("token create: %v\n%s", err, out)
	}
	return resp.Secret
}

// mustRun runs ferryctl and fails unless it exits 0 with every want in
// its output.
func mustRun(t *testing.T, cfg string, args []string, want ...string) string {
	t.Helper()
	code, out, errOut := run(t, cfg, args...)
	if code != 0 {
		t.Fatalf("ferryctl %s: exit %d: %s", strings.Join(args, " "), code, errOut)
	}
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("ferryctl %s: output lacks %q:\n%s", strings.Join(args, " "), w, out)
		}
	}
	return out
}

// wantAudit fails unless a row of `ferryctl audit` has the words of want
// after its time column.
func wantAudit(t *testing.T, table, want string) {
	t.Helper()
	for _, line := range strings.Split(table, "\n") {
		if f := strings.Fields(line); len(f) > 1 && strings.Join(f[1:], " ") == want {
			return
		}
	}
	t.Errorf("no audit row %q in\n%s", want, table)
}

func applyGoPackage(t *testing.T, cfg string) {
	t.Helper()
	dir := t.TempDir()
	tarball, sumFile, _ := goTarball(t, dir)
	pkg := filepath.Join(dir, "go.yaml")
	if err := os.WriteFile(pkg, []byte("name: go\nversion: 1.20.3\nartifact: go1.20.3.linux-amd64.tar.gz@1.20.3\nsteps:\n  - archive: {dest: /usr/local/go, strip_components: 1}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	mustRun(t, cfg, []string{"artifact", "push", tarball, "--checksum-file", sumFile})
	mustRun(t, cfg, []string{"package", "apply", "-f", pkg})
}

// The labels rollouts select are the admin's: a join token grants some and
// allows others, a node cannot choose any other, and admins change them
// (and the group) later, each change audited; removed nodes are hidden
// and can be purged.
func TestLabelsAreTheAdmins(t *testing.T) {
	cfg := startController(t)
	conn := dialAdmin(t, cfg)
	e := newEnroller(t, conn)
	applyGoPackage(t, cfg)
	tok := createToken(t, cfg, "--group", "staging", "--label", "tier=web", "--allow-label", "rack=*", "--allow-label", "dc=sh1")
	mustRun(t, cfg, []string{"token", "list"}, "  tier=web  rack=*,dc=sh1  active  ")
	for _, bad := range []struct {
		args []string
		want string
	}{
		{[]string{"--allow-label", "rack"}, `Error: --allow-label: allowed label "rack": want key=value-glob, e.g. rack=* or dc=sh1` + "\n"},
		{[]string{"--label", "group=prod"}, "Error: --label: label key \"group\" is reserved: the group comes from the join token; change it with ferryctl node move\n"},
	} {
		if code, _, errOut := run(t, cfg, append([]string{"token", "create", "--group", "staging"}, bad.args...)...); code != 1 || errOut != bad.want {
			t.Errorf("token create %v: exit %d, stderr %q; want exit 1, %q", bad.args, code, errOut, bad.want)
		}
	}

	// A label the token does not allow: refused, nothing stored, no use
	// of the token spent.
	_, err := e.enroll(tok, "n1", map[string]string{"rack": "r1", "role": "db"})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("enroll asking for role=db: %v, want PermissionDenied", err)
	}
	for _, want := range []string{"label role=db is not allowed by the join token", "(it allows rack=*, dc=sh1)"} {
		if !strings.Contains(status.Convert(err).Message(), want) {
			t.Errorf("refusal %q does not say %q", status.Convert(err).Message(), want)
		}
	}
	if out := mustRun(t, cfg, []string{"nodes", "--all"}); strings.Count(out, "\n") != 1 {
		t.Errorf("a refused enrollment left a node:\n%s", out)
	}
	mustRun(t, cfg, []string{"token", "list"}, " 0/∞ ")
	// Past the syntax's limits: refused before the token is even looked at.
	_, err = e.enroll(tok, "n1", map[string]string{"rack": strings.Repeat("r", 120<<10)})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "at most 63 characters") {
		t.Errorf("enroll with a 120 KB label: %v, want InvalidArgument naming the 63-character limit", err)
	}

	// Allowed labels are granted; the token's own replace the node's.
	resp, err := e.enroll(tok, "n1", map[string]string{"rack": "r1", "tier": "db"})
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"rack": "r1", "tier": "web"}; !maps.Equal(resp.Labels, want) {
		t.Errorf("granted labels %v, want %v", resp.Labels, want)
	}
	mustRun(t, cfg, []string{"nodes"}, "n1  ", "  rack=r1,tier=web  ")
	mustRun(t, cfg, []string{"nodes", "--selector", "rack=r1"}, "\nn1  ")
	if out := mustRun(t, cfg, []string{"nodes", "--selector", "rack=r2"}); strings.Contains(out, "n1") {
		t.Errorf("nodes --selector rack=r2 lists n1 (rack=r1):\n%s", out)
	}

	plan := func(target ...string) (int, string) {
		code, out, errOut := run(t, cfg, append([]string{"rollout", "--package", "go@1.20.3", "--plan"}, target...)...)
		return code, out + errOut
	}
	// What the node asked for but the token overrode is not selectable.
	if code, out := plan("--selector", "tier=db"); code == 0 || !strings.Contains(out, "no enrolled node matches selector=tier=db") {
		t.Errorf("plan for tier=db (asked for by the node, not granted): exit %d\n%s", code, out)
	}
	if code, out := plan("--selector", "rack=r1"); code != 0 || !strings.Contains(out, "n1") {
		t.Errorf("plan for rack=r1: exit %d, want n1 planned\n%s", code, out)
	}

	// An admin relabels the node: selection follows.
	mustRun(t, cfg, []string{"node", "label", "n1", "role=db", "rack-"}, "node n1 labeled: role=db,tier=web\n")
	if code, out := plan("--selector", "role=db"); code != 0 || !strings.Contains(out, "n1") {
		t.Errorf("plan for role=db after labeling: exit %d\n%s", code, out)
	}
	if code, _ := plan("--selector", "rack=r1"); code == 0 {
		t.Error("plan for the removed label rack=r1 still matched")
	}
	if code, _, errOut := run(t, cfg, "node", "label", "n1", "group=prod"); code == 0 || !strings.Contains(errOut, `"group" is reserved`) {
		t.Errorf("label group=prod: exit %d, %s; want refused as reserved", code, errOut)
	}
	if code, _, errOut := run(t, cfg, "node", "label", "nope", "a=b"); code == 0 || !strings.Contains(errOut, `node "nope": not found`) {
		t.Errorf("label of an unknown node: exit %d, %s", code, errOut)
	}

	// And moves it to another group.
	mustRun(t, cfg, []string{"node", "move", "n1", "--group", "production"}, "node n1 moved to group production\n")
	if code, _ := plan("--group", "staging"); code == 0 {
		t.Error("plan for group staging still matched the moved node")
	}
	if code, out := plan("--group", "production", "--selector", "role=db"); code != 0 || !strings.Contains(out, "n1") {
		t.Errorf("plan for production role=db: exit %d\n%s", code, out)
	}
	audit := mustRun(t, cfg, []string{"audit", "--limit", "20"})
	wantAudit(t, audit, "admin/admin node.move n1 ok group=production")
	wantAudit(t, audit, "admin/admin node.label n1 ok set role=db remove rack")
	wantAudit(t, audit, "admin/admin node.label nope node \"nope\": not found; list nodes with `ferryctl nodes` set a=b")
	if !strings.Contains(audit, " ok ") || !strings.Contains(audit, "  group=staging labels=tier=web allow=rack=*,dc=sh1\n") {
		t.Errorf("audit of token create lacks what it grants:\n%s", audit)
	}

	// Removed nodes are hidden unless asked for, and can be purged.
	mustRun(t, cfg, []string{"node", "remove", "n1"})
	if out := mustRun(t, cfg, []string{"nodes"}); strings.Contains(out, "n1") {
		t.Errorf("ferryctl nodes lists the removed node:\n%s", out)
	}
	mustRun(t, cfg, []string{"nodes", "--all"}, "n1  ", " removed ")
	mustRun(t, cfg, []string{"nodes", "--state", "removed"}, "n1  ")
	mustRun(t, cfg, []string{"node", "remove", "n1", "--purge"}, "node n1 removed and purged")
	if out := mustRun(t, cfg, []string{"nodes", "--all"}); strings.Contains(out, "n1") {
		t.Errorf("the purged node is still listed:\n%s", out)
	}
	wantAudit(t, mustRun(t, cfg, []string{"audit", "--limit", "3"}), "admin/admin node.purge n1 ok")
	// The ID is free again for a new enrollment.
	if _, err := e.enroll(tok, "n1", nil); err != nil {
		t.Errorf("enroll n1 again after the purge: %v", err)
	}
}

// An admin holds at most 16 watches; the 17th is refused until one ends.
func TestWatchLimit(t *testing.T) {
	cfg := startController(t)
	conn := dialAdmin(t, cfg)
	if _, err := newEnroller(t, conn).enroll(createToken(t, cfg, "--group", "staging"), "n1", nil); err != nil {
		t.Fatal(err)
	}
	nodes := ferryv1.NewNodeServiceClient(conn)
	watch := func() (context.CancelFunc, error) {
		ctx, cancel := context.WithCancel(context.Background())
		s, err := nodes.WatchNodes(ctx, &ferryv1.WatchNodesRequest{})
		if err == nil {
			var m *ferryv1.WatchNodesResponse
			//nolint:staticcheck // checks that the deprecated field stays empty
			if m, err = s.Recv(); err == nil && (m.GetEvent().GetId() != "n1" || m.Node != nil) {
				err = fmt.Errorf("first event %v, want a compact event for n1", m)
			}
		}
		return cancel, err
	}
	var cancels []context.CancelFunc
	defer func() {
		for _, c := range cancels {
			c()
		}
	}()
	for i := range 16 {
		cancel, err := watch()
		cancels = append(cancels, cancel)
		if err != nil {
			t.Fatalf("watch %d: %v", i+1, err)
		}
	}
	cancel, err := watch()
	cancel()
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "16 node watches") {
		t.Fatalf("17th watch: %v, want ResourceExhausted naming the limit of 16", err)
	}
	cancels[0]()
	for range 100 { // the server sees the cancellation shortly after
		if cancel, err = watch(); err == nil {
			break
		}
		cancel()
	}
	cancels = append(cancels, cancel)
	if err != nil {
		t.Errorf("watch after one ended: %v", err)
	}
}

// 2,000 nodes with the most and longest labels a node can have list
// through ferryctl's paging, in pages far below the message limit.
func TestNodesPagesLargeFleet(t *testing.T) {
	if testing.Short() {
		t.Skip("enrolls 2,000 nodes")
	}
	const fleet = 2000
	cfg := startController(t)
	conn := dialAdmin(t, cfg)
	e := newEnroller(t, conn)
	prefix := strings.Repeat(strings.Repeat("p", 63)+".", 3) + strings.Repeat("p", 61) // 253 characters
	args := []string{"--group", "staging"}
	for i := range labels.MaxLabels {
		args = append(args, "--label", fmt.Sprintf("%s/%s=%s", prefix, strings.Repeat("k", 60)+fmt.Sprintf("%03d", i), strings.Repeat("v", labels.MaxValueLen)))
	}
	tok := createToken(t, cfg, args...)
	var wg sync.WaitGroup
	errs := make(chan error, fleet)
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < fleet; i += 8 {
				if _, err := e.enroll(tok, fmt.Sprintf("node-%04d", i), nil); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	page, err := ferryv1.NewNodeServiceClient(conn).ListNodes(context.Background(), &ferryv1.ListNodesRequest{PageSize: 5000})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(page.Nodes); n == 0 || n >= fleet || page.NextPageToken == "" {
		t.Fatalf("one ListNodes call returned %d nodes and next page %q; want a partial page", n, page.NextPageToken)
	}
	if size := len(page.Nodes[0].Labels); size != labels.MaxLabels+1 {
		t.Fatalf("node has %d labels, want %d and the group", size, labels.MaxLabels)
	}

	out := mustRun(t, cfg, []string{"nodes"})
	if lines := strings.Count(out, "\n"); lines != fleet+1 {
		t.Errorf("ferryctl nodes printed %d lines, want a header and %d nodes", lines, fleet)
	}
	for _, id := range []string{"node-0000 ", "node-1000 ", "node-1999 "} {
		if !strings.Contains(out, id) {
			t.Errorf("ferryctl nodes does not list %s", id)
		}
	}
}

// An enrolled node cannot grow the fleet view with what it reports: a
// hello or heartbeat past a limit is refused with the limit named, and
// nothing of it is kept.
func TestNodeReportsAreBounded(t *testing.T) {
	cfg := startController(t)
	conn := dialAdmin(t, cfg)
	e := newEnroller(t, conn)
	resp, err := e.enroll(createToken(t, cfg, "--group", "staging"), "n1", nil)
	if err != nil {
		t.Fatal(err)
	}
	cred, err := credential.Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	agent := ferryv1.NewAgentServiceClient(e.dialAgent(t, cred.Controller, resp))
	long := strings.Repeat("h", 120<<10)
	many := make([]*ferryv1.InstalledPackage, 257)
	for i := range many {
		many[i] = &ferryv1.InstalledPackage{Name: "p", Version: "1"}
	}
	hello := &ferryv1.ConnectRequest{Msg: &ferryv1.ConnectRequest_Hello{Hello: &ferryv1.AgentHello{AgentVersion: "1.0", Facts: &ferryv1.Facts{Os: "linux", Hostname: "n1"}}}}
	for _, tc := range []struct {
		name string
		msgs []*ferryv1.ConnectRequest
		want string
	}{
		{"hello with a 120 KB host name", []*ferryv1.ConnectRequest{{Msg: &ferryv1.ConnectRequest_Hello{Hello: &ferryv1.AgentHello{Facts: &ferryv1.Facts{Hostname: long}}}}},
			"hello: host name is 122880 bytes: at most 256 are accepted"},
		{"heartbeat listing 257 packages", []*ferryv1.ConnectRequest{hello, {Msg: &ferryv1.ConnectRequest_Heartbeat{Heartbeat: &ferryv1.Heartbeat{Installed: many}}}},
			"heartbeat lists 257 installed packages: at most 256 are accepted"},
		{"heartbeat with a 120 KB kernel", []*ferryv1.ConnectRequest{hello, {Msg: &ferryv1.ConnectRequest_Heartbeat{Heartbeat: &ferryv1.Heartbeat{Facts: &ferryv1.Facts{Kernel: long}}}}},
			"heartbeat: kernel is 122880 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			stream, err := agent.Connect(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range tc.msgs {
				if err := stream.Send(m); err != nil {
					t.Fatal(err)
				}
			}
			for {
				_, err = stream.Recv() // the welcome, then the refusal
				if err != nil {
					break
				}
			}
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("stream ended with %v, want InvalidArgument saying %q", err, tc.want)
			}
			code, out, errOut := run(t, cfg, "-o", "json", "nodes")
			if code != 0 || strings.Contains(out, "hhhhhhhh") || len(out) > 4096 {
				t.Errorf("ferryctl nodes after the refusal: exit %d, %d bytes (%s)", code, len(out), errOut)
			}
		})
	}
}

// A watch sends compact events: one per node, then its changes: a node
// moved out of the watched group once, with its new group, and a purged
// node as purged.
func TestWatchEvents(t *testing.T) {
	cfg := startController(t)
	conn := dialAdmin(t, cfg)
	e := newEnroller(t, conn)
	tok := createToken(t, cfg, "--group", "staging")
	for _, id := range []string{"n1", "n2"} {
		if _, err := e.enroll(tok, id, nil); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stream, err := ferryv1.NewNodeServiceClient(conn).WatchNodes(ctx, &ferryv1.WatchNodesRequest{Group: "staging"})
	if err != nil {
		t.Fatal(err)
	}
	next := func() string {
		t.Helper()
		m, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		ev := m.GetEvent()
		return fmt.Sprintf("%s %s %s purged=%v", ev.GetId(), ev.GetGroup(), ev.GetState(), ev.GetPurged())
	}
	for _, want := range []string{"n1 staging NODE_STATE_PENDING purged=false", "n2 staging NODE_STATE_PENDING purged=false"} {
		if got := next(); got != want {
			t.Fatalf("event %q, want %q", got, want)
		}
	}
	mustRun(t, cfg, []string{"node", "move", "n1", "--group", "production"})
	if got, want := next(), "n1 production NODE_STATE_PENDING purged=false"; got != want {
		t.Fatalf("after the move: event %q, want %q", got, want)
	}
	mustRun(t, cfg, []string{"node", "label", "n1", "a=b"}) // outside the group now: no event
	mustRun(t, cfg, []string{"node", "remove", "n2", "--purge"})
	got := next()
	if got == "n2 staging NODE_STATE_REMOVED purged=false" {
		got = next()
	}
	if want := "n2 staging NODE_STATE_UNSPECIFIED purged=true"; got != want {
		t.Fatalf("after the purge: event %q, want %q", got, want)
	}
}
