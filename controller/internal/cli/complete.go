package cli

import (
	"context"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/enumword"
	"github.com/ferrydeploy/ferry/shared/labels"
)

// completeWithin bounds what shell completion waits for the controller: a
// tab press that hangs is worse than one that offers nothing.
const completeWithin = 3 * time.Second

// A completer asks the controller for the words that fit an argument or a
// flag value; it offers nothing when the controller cannot be asked.
type completer func(a *app, cmd *cobra.Command) []string

// Completions by flag name, for every command that has the flag; commands
// other helpers add pick them up by using the same flag names.
var flagCompleters = map[string]completer{
	"group":    completeGroups,
	"node":     completeNodes,
	"selector": completeLabels,
	"state": func(*app, *cobra.Command) []string {
		return []string{"healthy", "stale", "unreachable", "suspect", "down", "left", "removed", "pending"}
	},
	"on-failure": func(*app, *cobra.Command) []string { return []string{"pause", "abort", "rollback"} },
	"catch-up":   func(*app, *cobra.Command) []string { return []string{"true", "false"} },
	"output":     func(*app, *cobra.Command) []string { return []string{outTable, outWide, outJSON, outYAML} },
}

// Completions of positional arguments by command path (after "ferryctl"),
// one completer per position.
var argCompleters = map[string][]completer{
	"rollout status":  {completeRollouts},
	"rollout promote": {completeRollouts},
	"rollout pause":   {completeRollouts},
	"rollout resume":  {completeRollouts},
	"rollout abort":   {completeRollouts},
	"logs":            {completeRollouts, completeNodes},
	"node show":       {completeNodes},
	"node remove":     {completeNodes},
	"node label":      {completeNodes},
	"node move":       {completeNodes},
	"package show":    {completePackageRefs},
	"group show":      {completeGroups},
	"group set":       {completeGroups},
}

// addCompletions wires the completers into the command tree.
func (a *app) addCompletions(c *cobra.Command) {
	for _, sub := range c.Commands() {
		a.addCompletions(sub)
	}
	path := strings.TrimPrefix(strings.TrimPrefix(c.CommandPath(), "ferryctl"), " ")
	if comps, ok := argCompleters[path]; ok && c.ValidArgsFunction == nil {
		c.ValidArgsFunction = func(cmd *cobra.Command, args []string, _ string) ([]cobra.Completion, cobra.ShellCompDirective) {
			if len(args) >= len(comps) {
				return nil, cobra.ShellCompDirectiveNoFileComp
			}
			return comps[len(args)](a, cmd), cobra.ShellCompDirectiveNoFileComp
		}
	}
	register := func(name string, fn completer) {
		_ = c.RegisterFlagCompletionFunc(name, func(cmd *cobra.Command, _ []string, _ string) ([]cobra.Completion, cobra.ShellCompDirective) {
			return fn(a, cmd), cobra.ShellCompDirectiveNoFileComp
		}) // an error only says the flag already has one
	}
	for name, fn := range flagCompleters {
		if c.LocalNonPersistentFlags().Lookup(name) != nil || (c.Parent() == nil && c.PersistentFlags().Lookup(name) != nil) {
			register(name, fn)
		}
	}
	if c.LocalNonPersistentFlags().Lookup("package") != nil {
		// rollout wants NAME@VERSION; list and history a name.
		if strings.Contains(c.Flags().Lookup("package").Usage, "NAME@VERSION") {
			register("package", completePackageRefs)
		} else {
			register("package", completePackageNames)
		}
	}
}

// ask runs fn against the controller within completeWithin; completion
// must never print an error into the shell.
func ask[Resp any](a *app, cmd *cobra.Command, fn func(ctx context.Context, a *app) (*Resp, error)) *Resp {
	conn, err := a.connect()
	if err != nil || conn == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), completeWithin)
	defer cancel()
	resp, err := fn(ctx, a)
	if err != nil {
		return nil
	}
	return resp
}

func fleetNodes(a *app, cmd *cobra.Command) []*ferryv1.Node {
	resp := ask(a, cmd, func(ctx context.Context, a *app) (*ferryv1.ListNodesResponse, error) {
		return ferryv1.NewNodeServiceClient(a.conn).ListNodes(ctx, &ferryv1.ListNodesRequest{HideRemoved: true, PageSize: 1000})
	})
	return resp.GetNodes()
}

func completeNodes(a *app, cmd *cobra.Command) []string {
	var out []string
	for _, n := range fleetNodes(a, cmd) {
		out = append(out, n.Id)
	}
	return out
}

func completeGroups(a *app, cmd *cobra.Command) []string {
	var out []string
	for _, n := range fleetNodes(a, cmd) {
		out = append(out, n.Group)
	}
	return uniq(out)
}

func completeLabels(a *app, cmd *cobra.Command) []string {
	var out []string
	for _, n := range fleetNodes(a, cmd) {
		for k, v := range n.Labels {
			if k != labels.Reserved {
				out = append(out, k+"="+v)
			}
		}
	}
	return uniq(out)
}

func completeRollouts(a *app, cmd *cobra.Command) []string {
	resp := ask(a, cmd, func(ctx context.Context, a *app) (*ferryv1.ListRolloutsResponse, error) {
		return ferryv1.NewRolloutServiceClient(a.conn).ListRollouts(ctx, &ferryv1.ListRolloutsRequest{Limit: 50})
	})
	var out []string
	for _, r := range resp.GetRollouts() {
		// zsh and fish show the text after a tab as the word's description.
		out = append(out, r.Id+"\t"+r.PackageName+"@"+r.PackageVersion+" "+enumword.Spaced(r.State))
	}
	return out
}

func packages(a *app, cmd *cobra.Command) []*ferryv1.Package {
	resp := ask(a, cmd, func(ctx context.Context, a *app) (*ferryv1.ListPackagesResponse, error) {
		return ferryv1.NewPackageServiceClient(a.conn).ListPackages(ctx, &ferryv1.ListPackagesRequest{})
	})
	return resp.GetPackages()
}

func completePackageRefs(a *app, cmd *cobra.Command) []string {
	var out []string
	for _, p := range packages(a, cmd) {
		out = append(out, p.Name+"@"+p.Version)
	}
	return out
}

func completePackageNames(a *app, cmd *cobra.Command) []string {
	var out []string
	for _, p := range packages(a, cmd) {
		out = append(out, p.Name)
	}
	return uniq(out)
}

func uniq(s []string) []string {
	slices.Sort(s)
	return slices.Compact(s)
}
