package cli

import (
	"crypto/x509"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ferrydeploy/ferry/controller/internal/credential"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/installpolicy"
	"github.com/ferrydeploy/ferry/shared/labels"
	"github.com/ferrydeploy/ferry/shared/pki"
)

func (a *app) tokenCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "token", Short: "Manage join tokens"}
	var group string
	var ttl time.Duration
	var uses uint32
	var grant, allow []string
	create := &cobra.Command{
		Use:   "create",
		Short: "Create a join token and print the enroll command for a node",
		Long: `Create a join token and print the enroll command for a node. The token
grants its group and --label labels to every node that enrolls with it. A
node may ask for more labels (ferry-agent enroll --label) only where
--allow-label allows them: KEY=GLOB, an exact key and a glob on the value,
e.g. --allow-label 'rack=*' --allow-label dc=sh1. Any other label is refused
at enrollment. Rollout selectors match only these labels, never the facts a
node reports.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if group == "" {
				return fmt.Errorf("--group is required: the group nodes enrolled with this token join (e.g. --group production)")
			}
			set := map[string]string{}
			for _, kv := range grant {
				k, v, err := labels.Parse(kv)
				if err != nil {
					return fmt.Errorf("--label: %w", err)
				}
				set[k] = v
			}
			if err := labels.Validate(set); err != nil {
				return fmt.Errorf("--label: %w", err)
			}
			if err := labels.ValidatePatterns(allow); err != nil {
				return fmt.Errorf("--allow-label: %w", err)
			}
			resp, err := call(a, cmd, ferryv1.NewTokenServiceClient, ferryv1.TokenServiceClient.CreateToken,
				&ferryv1.CreateTokenRequest{Group: group, Ttl: durationpb.New(ttl), MaxUses: uses, Labels: set, AllowLabels: allow})
			if err != nil {
				return err
			}
			return a.show(resp, func() error {
				limit := "unlimited uses"
				if uses > 0 {
					limit = fmt.Sprintf("%d use(s)", uses)
				}
				fmt.Fprintf(a.stdout, "token %s for group %s, expires %s, %s\n\nOn the node, run (NODE-ID: the node's name in lowercase; its host name when left out):\n\n"+
					"  ferry-agent enroll --controller %s --token %s --ca-pin %s --node-id NODE-ID --state-dir %s\n  ferry-agent run --state-dir %s\n",
					resp.Token.Id, group, resp.Token.ExpiresAt.AsTime().Local().Format(time.RFC3339), limit, a.cred.Controller, resp.Secret, resp.CaPin,
					installpolicy.DefaultStateDir, installpolicy.DefaultStateDir)
				if len(set) > 0 || len(allow) > 0 {
					fmt.Fprintf(a.stdout, "\nNodes get the labels %s and may ask for %s (with --label KEY=VALUE); any other label is refused.\n",
						orDash(labels.Format(set)), orNothing(strings.Join(allow, ", ")))
				}
				return nil
			})
		},
	}
	create.Flags().StringVar(&group, "group", "", "group granted to nodes that enroll with the token (required)")
	create.Flags().DurationVar(&ttl, "ttl", time.Hour, "how long the token works")
	create.Flags().Uint32Var(&uses, "uses", 0, "how many nodes may enroll with it (0: unlimited until it expires)")
	create.Flags().StringArrayVar(&grant, "label", nil, "label KEY=VALUE every node enrolled with the token gets (repeatable)")
	create.Flags().StringArrayVar(&allow, "allow-label", nil, "label KEY=GLOB a node may ask for at enrollment, e.g. 'rack=*' (repeatable)")

	list := &cobra.Command{
		Use:   "list",
		Short: "List join tokens (never their secrets)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			resp, err := call(a, cmd, ferryv1.NewTokenServiceClient, ferryv1.TokenServiceClient.ListTokens, &ferryv1.ListTokensRequest{})
			if err != nil {
				return err
			}
			return a.show(resp, func() error {
				now := time.Now()
				return printTable(a, []string{"ID", "GROUP", "USES", "EXPIRES", "LABELS", "ALLOWS", "STATUS", "CREATED BY"}, resp.Tokens, func(t *ferryv1.Token) []string {
					return []string{t.Id, t.Group, fmt.Sprintf("%d/%s", t.Uses, tokenMaxUses(t)), t.ExpiresAt.AsTime().Local().Format(time.RFC3339),
						orDash(labels.Format(t.Labels)), orDash(strings.Join(t.AllowLabels, ",")), tokenStatus(t, now), t.CreatedBy}
				})
			})
		},
	}
	revoke := &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke a join token",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := call(a, cmd, ferryv1.NewTokenServiceClient, ferryv1.TokenServiceClient.RevokeToken, &ferryv1.RevokeTokenRequest{Id: args[0]}); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "token %s revoked\n", args[0])
			return nil
		},
	}
	cmd.AddCommand(create, list, revoke)
	return cmd
}

func orNothing(s string) string {
	if s == "" {
		return "nothing more"
	}
	return s
}

func tokenStatus(t *ferryv1.Token, now time.Time) string {
	switch {
	case t.Revoked:
		return "revoked"
	case !now.Before(t.ExpiresAt.AsTime()):
		return "expired"
	case t.MaxUses > 0 && t.Uses >= t.MaxUses:
		return "used up"
	}
	return "active"
}

func tokenMaxUses(t *ferryv1.Token) string {
	if t.MaxUses > 0 {
		return fmt.Sprint(t.MaxUses)
	}
	return "∞"
}

func (a *app) certCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "cert", Short: "Issue and revoke admin credentials"}
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
			key, err := pki.NewKey()
			if err != nil {
				return err
			}
			csr, err := pki.CreateCSR(key, pki.Identity{Role: pki.RoleAdmin, Name: name})
			if err != nil {
				return err
			}
			req := &ferryv1.IssueAdminCertificateRequest{Name: name, CsrDer: csr}
			if ttl > 0 {
				req.Ttl = durationpb.New(ttl)
			}
			resp, err := call(a, cmd, ferryv1.NewCertificateServiceClient, ferryv1.CertificateServiceClient.IssueAdminCertificate, req)
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
	var revokeName string
	revoke := &cobra.Command{
		Use:   "revoke --admin NAME",
		Short: "Refuse every credential issued to an admin name until now",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if revokeName == "" {
				return fmt.Errorf("--admin NAME is required")
			}
			resp, err := call(a, cmd, ferryv1.NewCertificateServiceClient, ferryv1.CertificateServiceClient.RevokeAdmin, &ferryv1.RevokeAdminRequest{Name: revokeName})
			if err != nil {
				return err
			}
			return a.show(resp, func() error {
				fmt.Fprintf(a.stdout, "admin %s revoked: credentials issued before %s are refused; issue a new one with `ferryctl cert issue --admin %s`\n",
					revokeName, resp.RevokedAt.AsTime().Local().Format(time.RFC3339), revokeName)
				return nil
			})
		},
	}
	revoke.Flags().StringVar(&revokeName, "admin", "", "admin name (required)")
	cmd.AddCommand(issue, revoke)
	return cmd
}

func (a *app) auditCmd() *cobra.Command {
	var limit uint32
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "List admin actions, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			resp, err := call(a, cmd, ferryv1.NewAuditServiceClient, ferryv1.AuditServiceClient.ListAuditEvents, &ferryv1.ListAuditEventsRequest{Limit: limit})
			if err != nil {
				return err
			}
			return a.show(resp, func() error {
				return printTable(a, []string{"TIME", "ACTOR", "ACTION", "TARGET", "OUTCOME", "DETAIL"}, resp.Events, func(e *ferryv1.AuditEvent) []string {
					return []string{e.At.AsTime().Local().Format(time.RFC3339), e.Actor, e.Action, e.Target, e.Outcome, e.Detail}
				})
			})
		},
	}
	cmd.Flags().Uint32Var(&limit, "limit", 100, "at most this many events")
	return cmd
}
