package cli

import (
	"crypto/x509"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ferrydeploy/ferry/controller/internal/credential"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/pki"
)

func (a *app) tokenCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "token", Short: "Manage join tokens"}
	var group string
	var ttl time.Duration
	var uses uint32
	create := &cobra.Command{
		Use:   "create",
		Short: "Create a join token and print the enroll command for a node",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if group == "" {
				return fmt.Errorf("--group is required: the group nodes enrolled with this token join (e.g. --group production)")
			}
			conn, err := a.connect()
			if err != nil {
				return err
			}
			ctx, cancel := a.ctx(cmd)
			defer cancel()
			resp, err := ferryv1.NewTokenServiceClient(conn).CreateToken(ctx, &ferryv1.CreateTokenRequest{Group: group, Ttl: durationpb.New(ttl), MaxUses: uses})
			if err != nil {
				return err
			}
			if a.output == "json" {
				return a.printJSON(resp)
			}
			limit := "unlimited uses"
			if uses > 0 {
				limit = fmt.Sprintf("%d use(s)", uses)
			}
			fmt.Fprintf(a.stdout, "token %s for group %s, expires %s, %s\n\nOn the node, run:\n\n  ferry-agent enroll --controller %s --token %s --ca-pin %s\n",
				resp.Token.Id, group, resp.Token.ExpiresAt.AsTime().Local().Format(time.RFC3339), limit, a.cred.Controller, resp.Secret, resp.CaPin)
			return nil
		},
	}
	create.Flags().StringVar(&group, "group", "", "group granted to nodes that enroll with the token (required)")
	create.Flags().DurationVar(&ttl, "ttl", time.Hour, "how long the token works")
	create.Flags().Uint32Var(&uses, "uses", 0, "how many nodes may enroll with it (0: unlimited until it expires)")

	list := &cobra.Command{
		Use:   "list",
		Short: "List join tokens (never their secrets)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			conn, err := a.connect()
			if err != nil {
				return err
			}
			ctx, cancel := a.ctx(cmd)
			defer cancel()
			resp, err := ferryv1.NewTokenServiceClient(conn).ListTokens(ctx, &ferryv1.ListTokensRequest{})
			if err != nil {
				return err
			}
			if a.output == "json" {
				return a.printJSON(resp)
			}
			w := a.table()
			fmt.Fprintln(w, "ID\tGROUP\tUSES\tEXPIRES\tSTATUS\tCREATED BY")
			now := time.Now()
			for _, t := range resp.Tokens {
				st := "active"
				switch {
				case t.Revoked:
					st = "revoked"
				case !now.Before(t.ExpiresAt.AsTime()):
					st = "expired"
				case t.MaxUses > 0 && t.Uses >= t.MaxUses:
					st = "used up"
				}
				max := "∞"
				if t.MaxUses > 0 {
					max = fmt.Sprint(t.MaxUses)
				}
				fmt.Fprintf(w, "%s\t%s\t%d/%s\t%s\t%s\t%s\n", t.Id, t.Group, t.Uses, max, t.ExpiresAt.AsTime().Local().Format(time.RFC3339), st, t.CreatedBy)
			}
			return w.Flush()
		},
	}
	revoke := &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke a join token",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			conn, err := a.connect()
			if err != nil {
				return err
			}
			ctx, cancel := a.ctx(cmd)
			defer cancel()
			if _, err := ferryv1.NewTokenServiceClient(conn).RevokeToken(ctx, &ferryv1.RevokeTokenRequest{Id: args[0]}); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "token %s revoked\n", args[0])
			return nil
		},
	}
	cmd.AddCommand(create, list, revoke)
	return cmd
}

func (a *app) certCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "cert", Short: "Issue credentials"}
	var name, out string
	var ttl time.Duration
	issue := &cobra.Command{
		Use:   "issue --admin NAME",
		Short: "Issue an admin credential (the key is generated here and never sent)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if name == "" {
				return fmt.Errorf("--admin NAME is required")
			}
			if err := pki.ValidateName("admin name", name); err != nil {
				return err
			}
			if out == "" {
				out = name + ".yaml"
			}
			if _, err := os.Stat(out); err == nil {
				return fmt.Errorf("%s exists; choose another --out or move it away", out)
			}
			conn, err := a.connect()
			if err != nil {
				return err
			}
			key, err := pki.NewKey()
			if err != nil {
				return err
			}
			csr, err := pki.CreateCSR(key, pki.Identity{Role: pki.RoleAdmin, Name: name})
			if err != nil {
				return err
			}
			ctx, cancel := a.ctx(cmd)
			defer cancel()
			req := &ferryv1.IssueAdminCertificateRequest{Name: name, CsrDer: csr}
			if ttl > 0 {
				req.Ttl = durationpb.New(ttl)
			}
			resp, err := ferryv1.NewCertificateServiceClient(conn).IssueAdminCertificate(ctx, req)
			if err != nil {
				return err
			}
			cert, err := x509.ParseCertificate(resp.CertificateDer)
			if err != nil {
				return err
			}
			ca, err := x509.ParseCertificate(resp.CaCertificateDer)
			if err != nil {
				return err
			}
			keyPEM, err := pki.EncodeKey(key)
			if err != nil {
				return err
			}
			if err := credential.Write(out, a.cred.Controller, ca, cert, keyPEM); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "admin credential for %s written to %s (expires %s); use it with --config %s or FERRY_CONFIG\n", name, out, cert.NotAfter.Local().Format(time.RFC3339), out)
			return nil
		},
	}
	issue.Flags().StringVar(&name, "admin", "", "admin name (required)")
	issue.Flags().StringVar(&out, "out", "", "file to write (default NAME.yaml)")
	issue.Flags().DurationVar(&ttl, "ttl", 0, "certificate lifetime (default: the controller's, 1 year)")
	cmd.AddCommand(issue)
	return cmd
}

func (a *app) auditCmd() *cobra.Command {
	var limit uint32
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "List admin actions, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			conn, err := a.connect()
			if err != nil {
				return err
			}
			ctx, cancel := a.ctx(cmd)
			defer cancel()
			resp, err := ferryv1.NewAuditServiceClient(conn).ListAuditEvents(ctx, &ferryv1.ListAuditEventsRequest{Limit: limit})
			if err != nil {
				return err
			}
			if a.output == "json" {
				return a.printJSON(resp)
			}
			w := a.table()
			fmt.Fprintln(w, "TIME\tACTOR\tACTION\tTARGET\tOUTCOME\tDETAIL")
			for _, e := range resp.Events {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", e.At.AsTime().Local().Format(time.RFC3339), e.Actor, e.Action, e.Target, e.Outcome, e.Detail)
			}
			return w.Flush()
		},
	}
	cmd.Flags().Uint32Var(&limit, "limit", 100, "at most this many events")
	return cmd
}
