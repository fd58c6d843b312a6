package cli

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

func (a *app) gossipCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "gossip", Short: "Manage the gossip cluster's encryption key"}
	cmd.AddCommand(&cobra.Command{
		Use:   "rotate-key",
		Short: "Replace the gossip key; the previous one stops working after a grace period (node remove does this too)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			resp, err := call(a, cmd, ferryv1.NewGossipServiceClient, ferryv1.GossipServiceClient.RotateGossipKey, &ferryv1.RotateGossipKeyRequest{})
			if err != nil {
				return err
			}
			return a.show(resp, func() error {
				_, err := fmt.Fprintf(a.stdout, "gossip key rotated to generation %d; sent to %d connected agents (the others get it when they reconnect); the previous key stops working at %s\n",
					resp.GetGeneration(), resp.GetAgentsSent(), resp.GetPreviousKeyRetiresAt().AsTime().Local().Format(time.RFC3339))
				return err
			})
		},
	})
	return cmd
}
