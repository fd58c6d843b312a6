#!/usr/bin/env bash
# Ferry demo: a controller and a four-node fleet on this machine, and the
# whole story: pack the local Go toolchain as a release tarball with its
# .sha256, push it with checksum verification (and see a tampered copy
# refused), apply the package, roll it out to staging and then, with a
# canary and a promotion, to production, run `go version` from a node's
# install root, enroll one more production node that catches up by itself,
# restart a service with a service step (and watch a broken config roll
# back), abort a rollout that changes nothing, plan the undo and undo the
# production rollout anyway.
#
#   make demo          (builds first; or run this script after `make build`)
#
# Everything lives under ./.demo (wiped at start): the controller's data dir,
# each agent's state dir and install root, and every process's log. All
# daemons listen on loopback ports the kernel picks, so the demo never
# collides with anything already running. Whatever the script started is
# stopped when it exits, also on failure or Ctrl-C.
#
# Environment:
#   FERRY_BIN        folder with the binaries (default: <repo>/bin)
#   DEMO_DIR         working folder (default: <repo>/.demo)
#   DEMO_HEARTBEAT   heartbeat interval agents are told to use (default 2s)
#   DEMO_TIMEOUT     seconds to wait for each step (default 30)
#   DEMO_KEEP=1      leave the fleet running until Ctrl-C instead of stopping
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=$(realpath -m "${FERRY_BIN:-$REPO/bin}")
DEMO=$(realpath -m "${DEMO_DIR:-$REPO/.demo}")
HEARTBEAT=${DEMO_HEARTBEAT:-2s}
TIMEOUT=${DEMO_TIMEOUT:-30}

# The fleet: node ID and group.
NODES=(staging-1:staging prod-1:production prod-2:production prod-3:production)

CONTROLLER_PID=""
CONTROLLER_GRPC=""   # set by start_controller
CONTROLLER_HTTP=""
CA_PIN=""
declare -A AGENT_PID=()

if [[ -t 1 ]]; then BOLD=$'\e[1m' DIM=$'\e[2m' RED=$'\e[31m' RESET=$'\e[0m'; else BOLD="" DIM="" RED="" RESET=""; fi

# The binaries by name, as on an installed system.
PATH=$BIN:$PATH

step() { printf '\n%s==> %s%s\n' "$BOLD" "$*" "$RESET"; }
# rel shortens paths under the repository for display.
rel() { printf '%s' "${*//"$REPO"\//}"; }
# say_cmd prints a command as a user would type it; show prints it and
# runs it.
say_cmd() { printf '%s$ %s%s\n' "$DIM" "$(rel "$*")" "$RESET"; }
show() { say_cmd "$@"; "$@"; }
die() { printf '%sdemo: %s%s\n' "$RED" "$*" "$RESET" >&2; exit 1; }

# ferryctl runs the admin CLI with the controller's admin credential.
ferryctl() { FERRY_CONFIG="$DEMO/controller/admin.yaml" command ferryctl "$@"; }

# wait_for DESCRIPTION COMMAND... polls COMMAND (a quiet check) until it
# succeeds or TIMEOUT seconds pass.
wait_for() {
	local what=$1; shift
	local deadline=$((SECONDS + TIMEOUT))
	until "$@"; do
		if ((SECONDS >= deadline)); then
			die "timed out after ${TIMEOUT}s waiting for $what"
		fi
		sleep 0.2
	done
}

# stop_process NAME PID: SIGTERM (the daemons shut down gracefully), then
# SIGKILL if it is still there after 10 s.
stop_process() {
	local name=$1 pid=$2 i
	kill -TERM "$pid" 2>/dev/null || return 0
	for ((i = 0; i < 50; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.2
	done
	if kill -0 "$pid" 2>/dev/null; then
		echo "demo: $name (pid $pid) ignored SIGTERM for 10s; killing it" >&2
		kill -KILL "$pid" 2>/dev/null || true
	fi
	wait "$pid" 2>/dev/null || true
}

stop_agents() {
	local id
	for id in "${!AGENT_PID[@]}"; do
		stop_process "agent $id" "${AGENT_PID[$id]}"
		unset "AGENT_PID[$id]"
	done
}

stop_controller() {
	if [[ -n $CONTROLLER_PID ]]; then
		stop_process controller "$CONTROLLER_PID"
		CONTROLLER_PID=""
	fi
}

# cleanup runs on every exit: agents first (they say goodbye), then the
# controller. On failure it shows the end of each log.
cleanup() {
	local status=$?
	trap - EXIT INT TERM
	stop_agents
	stop_controller
	if ((status == 130 || status == 143)); then
		echo "demo: interrupted; everything it started is stopped" >&2
	elif ((status != 0)) && [[ -d $DEMO/logs ]]; then
		local f
		for f in "$DEMO"/logs/*.log; do
			[[ -e $f ]] || continue
			printf '\n%s--- last lines of %s%s\n' "$BOLD" "$(rel "$f")" "$RESET" >&2
			tail -n 15 "$f" >&2
		done
	fi
	exit "$status"
}

check_binaries() {
	local b
	for b in ferry-controller ferry-agent ferryctl; do
		[[ -x $BIN/$b ]] || die "$BIN/$b not found: run 'make build' first (or 'make demo')"
	done
}

prepare_dir() {
	case $DEMO in
	/ | "$REPO" | "$HOME" | /tmp) die "DEMO_DIR=$DEMO would wipe more than the demo; pick a folder of its own" ;;
	esac
	step "Preparing $(rel "$DEMO") (removing any previous demo)"
	rm -rf "$DEMO"
	mkdir -p "$DEMO/logs" "$DEMO/agents"
}

# banner_value KEY reads a "  KEY: value" line the controller printed at start.
banner_value() {
	sed -n "s/^  $1: *//p" "$DEMO/logs/controller.log" | tail -n 1
}

# controller_started succeeds once the controller printed its banner and
# stops the demo at once if the controller exited.
controller_started() {
	kill -0 "$CONTROLLER_PID" 2>/dev/null || die "the controller exited during start (see $(rel "$DEMO/logs/controller.log"))"
	grep -q '^  admin credential:' "$DEMO/logs/controller.log"
}

controller_ready() { ferryctl nodes >/dev/null 2>&1; }

start_controller() {
	step "Starting the controller (a new CA, serving certificate and admin credential)"
	# Port 0: the kernel picks free loopback ports; the controller prints them.
	local listen=${CONTROLLER_GRPC:-127.0.0.1:0} http=${CONTROLLER_HTTP:-127.0.0.1:0}
	local -a cmd=(ferry-controller --data-dir "$DEMO/controller" --listen "$listen" --http-listen "$http"
		--gossip-listen 127.0.0.1:0 --heartbeat-interval "$HEARTBEAT")
	say_cmd "${cmd[@]}"
	"${cmd[@]}" >>"$DEMO/logs/controller.log" 2>&1 &
	CONTROLLER_PID=$!
	wait_for "the controller to start (see $(rel "$DEMO/logs/controller.log"))" controller_started
	CONTROLLER_GRPC=$(banner_value gRPC | cut -d' ' -f1)
	CONTROLLER_HTTP=$(banner_value HTTP)
	CA_PIN=$(banner_value 'CA pin')
	wait_for "the controller to answer ferryctl" controller_ready
	grep -v '^{' "$DEMO/logs/controller.log"
}

# enroll_group GROUP NODE... creates one join token for the group's nodes,
# shows the enroll command ferryctl prints, and runs it on each node.
enroll_group() {
	local group=$1; shift
	step "Enrolling $* into group $group"
	local out
	local -a create=(ferryctl token create --group "$group" --uses "$#" --ttl 10m)
	say_cmd "${create[@]}"
	out=$("${create[@]}")
	printf '%s\n' "$out"
	local -a enroll
	# The printed line ends with --node-id NODE-ID --state-dir DIR, which the
	# demo gives per node below.
	read -ra enroll <<<"$(printf '%s\n' "$out" | grep -o 'ferry-agent enroll .*' | sed 's/ --node-id .*//')"
	((${#enroll[@]} > 0)) || die "ferryctl token create printed no enroll command"
	[[ " ${enroll[*]} " == *" --ca-pin $CA_PIN "* ]] || die "the token's CA pin is not the controller's ($CA_PIN)"
	local id
	for id in "$@"; do
		mkdir -p "$DEMO/agents/$id/root"
		show "${enroll[@]}" --node-id "$id" --state-dir "$DEMO/agents/$id/state"
	done
}

# write_stub_systemctl ID puts a stand-in for systemctl in the node's
# stub-bin folder: this demo runs without systemd, so each agent gets this
# script first on its PATH. It records every call in calls.log and plays a
# unit that comes up only when the node's /etc/myapp/config starts with
# "ok" (like a daemon that refuses a broken config).
write_stub_systemctl() {
	local dir="$DEMO/agents/$1/stub-bin"
	mkdir -p "$dir"
	cat >"$dir/systemctl" <<'SH'
#!/bin/sh
# Demo stand-in for systemctl (no systemd here); see demo.sh.
d=$(dirname "$0")
printf 'systemctl %s\n' "$*" >>"$d/calls.log"
config_ok() { grep -q '^ok' "$d/../root/etc/myapp/config" 2>/dev/null; }
case $1 in
is-active) s=$(cat "$d/state" 2>/dev/null || echo inactive); echo "$s"; [ "$s" = active ] ;;
is-enabled) echo enabled ;;
start | restart | reload) if config_ok; then echo active; else echo activating; fi >"$d/state" ;;
stop) echo inactive >"$d/state" ;;
status) echo "myapp.service (demo stub): $(cat "$d/state" 2>/dev/null || echo inactive)" ;;
esac
SH
	chmod 755 "$dir/systemctl"
}

start_agent() {
	local id=$1
	write_stub_systemctl "$id"
	local -a cmd=(ferry-agent run --state-dir "$DEMO/agents/$id/state" --root "$DEMO/agents/$id/root"
		--gossip-listen 127.0.0.1:0)
	say_cmd PATH="$(rel "$DEMO/agents/$id/stub-bin"):\$PATH" "${cmd[@]}"
	PATH="$DEMO/agents/$id/stub-bin:$PATH" "${cmd[@]}" >>"$DEMO/logs/agent-$id.log" 2>&1 &
	AGENT_PID[$id]=$!
}

# node_healthy ID succeeds when ferryctl lists the node as healthy.
node_healthy() {
	ferryctl nodes --state healthy 2>/dev/null | awk -v id="$1" 'NR > 1 && $1 == id { found = 1 } END { exit !found }'
}

# gossip_sees_fleet succeeds when gossip reports every node alive.
gossip_sees_fleet() {
	local alive
	alive=$(ferryctl nodes -o json 2>/dev/null | grep -cE '"gossip_state": +"alive"') || return 1
	((alive == ${#NODES[@]}))
}

start_fleet() {
	local spec id group
	declare -A members=()
	local -a groups=()
	for spec in "${NODES[@]}"; do
		id=${spec%%:*} group=${spec#*:}
		[[ -n ${members[$group]:-} ]] || groups+=("$group")
		members[$group]="${members[$group]:-} $id"
	done
	for group in "${groups[@]}"; do
		# shellcheck disable=SC2086 # word splitting of the member list is intended
		enroll_group "$group" ${members[$group]}
	done

	step "Starting the agents (each with its own state dir and install root)"
	for spec in "${NODES[@]}"; do
		id=${spec%%:*}
		start_agent "$id"
	done
	for spec in "${NODES[@]}"; do
		id=${spec%%:*}
		wait_for "node $id to be healthy (see $(rel "$DEMO/logs/agent-$id.log"))" node_healthy "$id"
	done
	wait_for "gossip to see all ${#NODES[@]} nodes alive" gossip_sees_fleet
}

show_fleet() {
	step "The fleet"
	show ferryctl nodes
	echo
	echo "metrics: curl http://$CONTROLLER_HTTP/metrics"
	echo "admin:   FERRY_CONFIG=$(rel "$DEMO/controller/admin.yaml") bin/ferryctl nodes"
	echo "logs:    $(rel "$DEMO/logs")/"
}

GO_VERSION=""   # e.g. 1.26.8, set by pack_toolchain
TARBALL=""

# pack_toolchain makes go<version>.linux-<arch>.tar.gz from the local Go
# installation, laid out like the official release (a top-level go/), and
# its .sha256 as release pages publish it.
pack_toolchain() {
	local goroot arch
	goroot=$(go env GOROOT) arch=$(go env GOARCH)
	GO_VERSION=$(go env GOVERSION)
	GO_VERSION=${GO_VERSION#go}
	TARBALL="$DEMO/release/go$GO_VERSION.linux-$arch.tar.gz"
	step "Packing the local Go toolchain ($goroot) as $(basename "$TARBALL")"
	mkdir -p "$DEMO/release"
	say_cmd "tar -C $(dirname "$goroot") -cf - $(basename "$goroot") | gzip -1 > $(rel "$TARBALL")"
	tar -C "$(dirname "$goroot")" -cf - "$(basename "$goroot")" | gzip -1 >"$TARBALL"
	(cd "$DEMO/release" && sha256sum "$(basename "$TARBALL")" >"$(basename "$TARBALL").sha256")
	show cat "$TARBALL.sha256"
	ls -la "$TARBALL"
}

push_artifact() {
	step "Pushing a tampered copy: the controller must refuse it and keep nothing"
	mkdir -p "$DEMO/tampered"
	cp "$TARBALL" "$DEMO/tampered/"
	printf 'x' | dd of="$DEMO/tampered/$(basename "$TARBALL")" bs=1 seek=1000 conv=notrunc status=none
	if show ferryctl artifact push "$DEMO/tampered/$(basename "$TARBALL")" --checksum-file "$TARBALL.sha256"; then
		die "the controller accepted a tampered tarball"
	fi
	step "Pushing the real tarball with its checksum file"
	show ferryctl artifact push "$TARBALL" --checksum-file "$TARBALL.sha256"
	show ferryctl artifact list
}

apply_package() {
	step "Applying the package go@$GO_VERSION"
	cat >"$DEMO/release/go.yaml" <<YAML
# The Go toolchain, installed the way an operator would by hand.
name: go
version: $GO_VERSION
artifact: $(basename "$TARBALL")
steps:
  - archive: {dest: /usr/local/go, strip_components: 1}
  - env: {name: go, vars: {GOROOT: /usr/local/go}, path: [/usr/local/go/bin]}
  - sudoers: {name: deploy, rules: ["deploy ALL=(root) NOPASSWD: /opt/myapp/bin/*"]}
  - check: {run: "go version", expect: "go$GO_VERSION"}
YAML
	show cat "$DEMO/release/go.yaml"
	show ferryctl package apply -f "$DEMO/release/go.yaml"
}

rollout_staging() {
	step "Planning the staging rollout (changes nothing)"
	show ferryctl rollout --group staging --package "go@$GO_VERSION" --plan
	step "Rolling out to staging"
	show ferryctl rollout --group staging --package "go@$GO_VERSION" --auto-promote --healthy-for 2s
}

rollout_state() {
	ferryctl rollout status "$1" -o json 2>/dev/null | grep -q "\"state\": *\"$2\""
}

rollout_production() {
	step "Rolling out to production: one canary, then a promotion, then two at a time"
	local id watcher
	local -a start=(ferryctl rollout --group production --package "go@$GO_VERSION" --canary 1 --max-parallel 2 --healthy-for 2s --detach)
	say_cmd "${start[@]}"
	id=$("${start[@]}")
	echo "$id"
	say_cmd ferryctl rollout status "$id" --watch
	# The watcher runs beside the promotion below; its lines are marked so
	# the two outputs do not read as one.
	ferryctl rollout status "$id" --watch > >(sed -u 's/^/  watch | /') &
	watcher=$!
	wait_for "the canary to finish" rollout_state "$id" waiting_promotion
	show ferryctl rollout promote "$id"
	wait "$watcher" || die "the production rollout did not succeed"
	show ferryctl rollout status "$id"
}

check_node() {
	local id=prod-1 root="$DEMO/agents/prod-1/root"
	step "What $id now has under its install root"
	show "$root/usr/local/go/bin/go" version
	show cat "$root/etc/profile.d/go.sh"
	show ls -l "$root/etc/sudoers.d/deploy"
}

inventory() {
	step "Node inventory: what prod-1 runs, since when, and from which rollout"
	show ferryctl node show prod-1
	show ferryctl nodes --package "go@$GO_VERSION"
}

# caught_up ID succeeds when ferryctl group show lists no node behind and
# the node's install root has the toolchain.
caught_up() {
	[[ -x "$DEMO/agents/$1/root/usr/local/go/bin/go" ]] &&
		ferryctl group show production 2>/dev/null | grep -q '^every node is on the desired versions$'
}

catch_up_production() {
	step "A node enrolled after the production rollout catches up by itself"
	echo "The rollout recorded go@$GO_VERSION as production's desired version. prod-4 joins"
	echo "production only now; the controller gives it a catch-up job (same steps and checks)."
	enroll_group production prod-4
	NODES+=(prod-4:production)
	start_agent prod-4
	wait_for "node prod-4 to be healthy (see $(rel "$DEMO/logs/agent-prod-4.log"))" node_healthy prod-4
	wait_for "prod-4 to catch up to go@$GO_VERSION" caught_up prod-4
	show ferryctl group show production
	show ferryctl rollout list --package go --limit 3
	show "$DEMO/agents/prod-4/root/usr/local/go/bin/go" version
}

# service_step rolls out a config file and a service restart to staging,
# then a broken config whose service never comes up: the node puts the old
# config back and restarts the service on it.
service_step() {
	local stub="$DEMO/agents/staging-1/stub-bin"
	step "A service step: write a config, restart the unit that reads it, wait until it is active"
	echo "(this machine has no systemd: each agent runs with a stub systemctl first on its PATH,"
	echo " $(rel "$stub/systemctl"), which records its calls and says active once the config starts with ok)"
	local v config
	for v in 1 2; do
		config="ok: listen = :8080"
		[[ $v == 2 ]] && config="listen = :80 80   # broken"
		cat >"$DEMO/release/myapp-$v.yaml" <<YAML
name: myapp
version: "$v"
steps:
  - file: {path: /etc/myapp/config, content: "$config\n", mode: "0644"}
  - service: {unit: myapp, action: restart, timeout: 3s}
YAML
	done
	show cat "$DEMO/release/myapp-1.yaml"
	show ferryctl package apply -f "$DEMO/release/myapp-1.yaml"
	show ferryctl rollout --group staging --package myapp@1 --auto-promote --healthy-for 1s
	show grep -v is-active "$stub/calls.log"

	step "A broken config: the unit never becomes active, so the node rolls back and restarts it on the old config"
	show ferryctl package apply -f "$DEMO/release/myapp-2.yaml"
	local out
	say_cmd ferryctl rollout --group staging --package myapp@2 --auto-promote --healthy-for 1s
	if out=$(ferryctl rollout --group staging --package myapp@2 --auto-promote --healthy-for 1s 2>&1); then
		printf '%s\n' "$out"
		die "the rollout of a config that keeps the service down succeeded"
	fi
	printf '%s\n' "$out"
	show cat "$DEMO/agents/staging-1/root/etc/myapp/config"
	show grep -v is-active "$stub/calls.log"
	grep -q '^ok' "$DEMO/agents/staging-1/root/etc/myapp/config" || die "staging-1 did not get its old config back"
	[[ $(cat "$stub/state") == active ]] || die "the service is not active again on staging-1"
	echo "staging-1: the old config is back and myapp.service was restarted on it (active)"
}

# rollout_busy ID: a node of the rollout still has a job in flight (or the
# controller did not answer: keep waiting).
rollout_busy() {
	local out
	out=$(ferryctl rollout status "$1" -o json 2>/dev/null) || true
	[[ -z $out ]] || grep -qiE '"outcome": *"(node_outcome_)?(pending|downloading|installing|checking)"' <<<"$out"
}

# An aborted rollout that changes nothing must not stand in the way of the
# undo: the undo goes by what each node had before its latest change.
aborted_noop_rollout() {
	step "An aborted rollout that changes nothing (every node has go$GO_VERSION already)"
	local id
	local -a start=(ferryctl rollout --group production --package "go@$GO_VERSION" --canary 1 --detach)
	say_cmd "${start[@]}"
	id=$("${start[@]}")
	show ferryctl rollout abort "$id" || true # it may have ended already
	wait_for "the aborted rollout's canary to report" not_busy "$id"
	show ferryctl rollout status "$id" || true
	step "Planning the undo: per node, from what to what (changes nothing)"
	show ferryctl rollout undo --group production --package go --plan
}

not_busy() { ! rollout_busy "$1"; }

undo_production() {
	step "Undoing the production rollout (back to what each node had before)"
	show ferryctl rollout undo --group production --package go --canary 1 --auto-promote --max-parallel 3 --healthy-for 1s
	local root="$DEMO/agents/prod-1/root"
	if [[ -e $root/usr/local/go/bin/go ]]; then
		die "prod-1 still has the toolchain after the undo"
	fi
	if [[ -e $DEMO/agents/prod-4/root/usr/local/go/bin/go ]]; then
		die "prod-4 (caught up) still has the toolchain after the undo"
	fi
	echo "prod-1 and prod-4: /usr/local/go is gone again; staging-1 keeps go$GO_VERSION:"
	show "$DEMO/agents/staging-1/root/usr/local/go/bin/go" version
	show ferryctl rollout history --package go
	show ferryctl audit --limit 8
}

# failed_logs rolls out a package whose check fails on prod-2 only, then
# shows why with ferryctl logs --failed.
failed_logs() {
	step "A check that fails on one node: the rollout says where to look, ferryctl logs shows why"
	cat >"$DEMO/release/motd.yaml" <<'YAML'
name: motd
version: "1.0"
steps:
  - file: {path: /etc/motd, content: "welcome\n", mode: "0644"}
  - check: {run: 'if [ -e "$FERRY_ROOT/etc/motd.broken" ]; then echo "motd.broken is present" >&2; exit 3; fi; cat "$FERRY_ROOT/etc/motd"', expect: welcome}
YAML
	show ferryctl package apply -f "$DEMO/release/motd.yaml"
	mkdir -p "$DEMO/agents/prod-2/root/etc"
	show touch "$DEMO/agents/prod-2/root/etc/motd.broken"
	local id
	local -a start=(ferryctl rollout --group production --package motd@1.0 --auto-promote --max-parallel 3 --max-failures 0 --on-failure rollback --healthy-for 1s --detach)
	say_cmd "${start[@]}"
	id=$("${start[@]}")
	echo "$id"
	if show ferryctl rollout status "$id" --watch; then
		die "the rollout of motd@1.0 succeeded although its check fails on prod-2"
	fi
	show ferryctl logs "$id" --failed
}

shutdown_fleet() {
	step "Stopping the agents (SIGTERM: they leave gracefully)"
	stop_agents
	show ferryctl nodes
	step "Stopping the controller"
	stop_controller
	echo "done; state and logs are in $(rel "$DEMO")"
}

main() {
	check_binaries
	trap cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
	prepare_dir
	start_controller
	start_fleet
	show_fleet
	pack_toolchain
	push_artifact
	apply_package
	rollout_staging
	rollout_production
	check_node
	inventory
	catch_up_production
	service_step
	aborted_noop_rollout
	undo_production
	failed_logs
	if [[ ${DEMO_KEEP:-} == 1 ]]; then
		step "Fleet running; press Ctrl-C to stop it"
		while true; do sleep 1; done
	fi
	shutdown_fleet
}

main "$@"
