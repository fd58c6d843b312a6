package cli

import (
	"context"
	"regexp"
	"testing"

	"google.golang.org/grpc"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/pki"
	"github.com/ferrydeploy/ferry/shared/rpc"
)

// An enrollment shows in `ferryctl audit` as the join token's action,
// with the node, the group and the peer's address, and never the token's
// secret; so does a refused one.
func TestAuditListsEnrollments(t *testing.T) {
	cfg := startController(t)
	code, out, errOut := run(t, cfg, "token", "create", "--group", "staging", "--uses", "1")
	if code != 0 {
		t.Fatalf("token create: exit %d: %s", code, errOut)
	}
	m := regexp.MustCompile(`ferry-agent enroll --controller (\S+) --token ((\w+)\.\w+) --ca-pin (\S+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("token create printed no enroll command:\n%s", out)
	}
	addr, secret, id, pin := m[1], m[2], m[3], m[4]
	enrollNode := func(node string) error {
		key, _ := pki.NewKey()
		csr, err := pki.CreateCSR(key, pki.Identity{Role: pki.RoleAgent, Name: node})
		if err != nil {
			t.Fatal(err)
		}
		conn, err := grpc.NewClient(addr, rpc.DialOptions(rpc.PinnedTLS(pin, nil))...)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_, err = ferryv1.NewEnrollmentServiceClient(conn).Enroll(context.Background(), &ferryv1.EnrollRequest{Token: secret, NodeId: node, CsrDer: csr})
		return err
	}
	if err := enrollNode("web-01"); err != nil {
		t.Fatal(err)
	}
	if err := enrollNode("web-02"); err == nil {
		t.Fatal("a second enrollment with a one-use token was accepted")
	}

	code, out, errOut = run(t, cfg, "audit", "--limit", "2")
	if code != 0 {
		t.Fatalf("audit: exit %d: %s", code, errOut)
	}
	for _, want := range []string{
		`token/` + id + `\s+node.enroll\s+web-01\s+ok\s+group=staging addr=127\.0\.0\.1:\d+\n`,
		`token/` + id + `\s+node.enroll\s+web-02\s+join token ` + id + ` is used up .*addr=127\.0\.0\.1:\d+\n`,
	} {
		if !regexp.MustCompile(want).MatchString(out) {
			t.Errorf("ferryctl audit does not match %q:\n%s", want, out)
		}
	}
	if regexp.MustCompile(regexp.QuoteMeta(secret[len(id)+1:])).MatchString(out) {
		t.Errorf("ferryctl audit shows the token's secret:\n%s", out)
	}
}
