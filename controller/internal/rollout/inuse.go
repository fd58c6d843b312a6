// In use: which package versions and artifacts the rollouts still need,
// so that removing a package record or collecting artifacts never takes
// one away from a job.

package rollout

import (
	"sort"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// PackageUsers lists what holds on to a package version: the rollouts
// that have not ended and send it (as an install, or as an undo's target
// on some node), and the nodes that have it installed: as they report it,
// or, for nodes that have not reported since the controller started, as
// their latest change recorded in the rollouts left them. Both sorted.
func (e *Engine) PackageUsers(name, version string) (rollouts, nodes []string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	has := map[string]bool{}
	reported := map[string]bool{}
	for _, n := range e.cfg.Fleet.Match(&ferryv1.Target{}) {
		if n.GetState() == ferryv1.NodeState_NODE_STATE_REMOVED {
			reported[n.GetId()] = true
			continue
		}
		if n.GetLastHeartbeat() != nil || len(n.GetInstalled()) > 0 {
			reported[n.GetId()] = true
			has[n.GetId()] = installedVersion(n, name) == version
		}
	}
	for id, ru := range e.runs {
		r := ru.r
		if r.GetPackageName() != name {
			continue
		}
		if !ru.ended() && !ru.frozen && usesVersion(ru, version) {
			rollouts = append(rollouts, id)
		}
		for _, nj := range r.GetNodes() {
			if reported[nj.GetNodeId()] {
				continue
			}
			reported[nj.GetNodeId()] = true
			if c, ok := e.lastChangeLocked(name, nj.GetNodeId()); ok && c.to == version {
				has[nj.GetNodeId()] = true
			}
		}
	}
	for id, ok := range has {
		if ok {
			nodes = append(nodes, id)
		}
	}
	sort.Strings(rollouts)
	sort.Strings(nodes)
	return rollouts, nodes
}

func usesVersion(ru *run, version string) bool {
	if ru.r.GetJobKind() == kindInstall {
		return ru.r.GetPackageVersion() == version
	}
	for _, n := range ru.r.GetNodes() {
		if n.GetJobKind() == kindInstall && n.GetTargetVersion() == version {
			return true
		}
	}
	return false
}

// ArtifactsInUse returns the digests of the artifacts that rollouts which
// have not ended may still send to a node, each with those rollouts' IDs.
func (e *Engine) ArtifactsInUse() map[string][]string {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := map[string][]string{}
	for id, ru := range e.runs {
		if ru.ended() || ru.frozen {
			continue
		}
		digests := map[string]bool{}
		for _, n := range ru.r.GetNodes() {
			if _, pkg, err := e.nodeJob(ru, n, ru.r.GetJobKind()); err == nil && pkg.GetArtifact().GetDigest() != "" {
				digests[pkg.GetArtifact().GetDigest()] = true
			}
		}
		for d := range digests {
			out[d] = append(out[d], id)
		}
	}
	for _, ids := range out {
		sort.Strings(ids)
	}
	return out
}
