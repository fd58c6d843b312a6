#!/usr/bin/env bash
# install.sh: install Ferry from this bundle, on the host or into a folder.
#
#   ./install.sh controller [OPTIONS]
#   ./install.sh agent --controller HOST:PORT --token T --ca-pin sha256:HEX [--node-id ID] [--label k=v]... [OPTIONS]
#
# It first checks every file of the bundle against SHA256SUMS (and, with
# --public-key, SHA256SUMS against its signature) and refuses to go on if
# anything does not match, naming the file. Then it makes the host look like
# this, changing only what differs, so a second run changes nothing:
#
#   /usr/local/bin/ferry-controller, ferryctl      0755 root:root   (controller)
#   /usr/local/bin/ferry-agent                     0755 root:root   (agent)
#   /etc/systemd/system/ferry-{controller,agent}.service  0644 root:root
#   /usr/lib/sysusers.d/ferry.conf                 0644 root:root   (controller; the ferry user)
#   /etc/ferry/                                    0755 root:root
#   /etc/ferry/controller.yaml                     0640 root:ferry  (controller)
#   /etc/ferry/agent.yaml                          0644 root:root   (agent)
#   /var/lib/ferry-controller/                     0700 ferry:ferry (controller data: CA, store, artifacts)
#   /var/lib/ferry-agent/                          0700 root:root   (agent state: identity, installed packages)
#
# An upgrade (running a newer bundle's install.sh) replaces the binaries and
# units and keeps the state: the data and state dirs are never touched, and
# a config file that was edited since it was installed is kept; the new
# example is written beside it as FILE.new, as dpkg does. A config file
# nobody edited is brought up to date. /var/lib/ferry-install/conffiles
# records what was installed, to tell the two apart.
#
# The agent is enrolled (ferry-agent enroll) unless its state dir already
# holds an identity. Then the service is enabled and (re)started with
# systemctl when systemd runs the host; otherwise the command to start it is
# printed.
#
# Options:
#   --root DIR          install under DIR instead of / (a trial on one machine, or a test).
#                       Paths in the config files point under DIR, the agent installs
#                       packages under DIR, and the host's systemd is never touched:
#                       the command to start the daemon is printed instead.
#   --dry-run           print what would change and change nothing
#   --no-start          install (and enable) but do not start or restart the service
#   --public-key FILE   check SHA256SUMS.sig against this ed25519 public key (an
#                       OpenSSH .pub line) before anything else; refuse if it is bad
#   --gossip-listen ADDR  gossip (memberlist) address, TCP and UDP (default :7946)
#   controller only:
#   --listen ADDR       gRPC (mTLS) listen address (default :7443)
#   --http-listen ADDR  /metrics, /healthz, /readyz address (default 127.0.0.1:7080)
#   --advertise HOST:PORT  the address agents and ferryctl dial
#   agent only:
#   --controller HOST:PORT, --token T, --ca-pin sha256:HEX  as `ferryctl token create` prints
#                       them (needed only until the node is enrolled)
#                       (several controllers: --controller A:PORT,B:PORT; enrollment records them all)
#   --node-id ID        node ID (default: the host name)
#   --label k=v         a label to ask for at enrollment (repeatable)
#
# Settings given here are written into the config file; a config file edited
# by hand is not changed (see .new above).
set -euo pipefail
umask 022
export LC_ALL=C

BUNDLE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
NAMESPACE=ferry-release

# Where things go, relative to the root.
BIN_DIR=/usr/local/bin
UNIT_DIR=/etc/systemd/system
SYSUSERS=/usr/lib/sysusers.d/ferry.conf
CONF_DIR=/etc/ferry
CONTROLLER_DATA=/var/lib/ferry-controller
AGENT_STATE=/var/lib/ferry-agent
RECORD=/var/lib/ferry-install/conffiles
USER_NAME=ferry

die() {
	printf 'install.sh: %s\n' "$*" >&2
	exit 1
}
note() { printf '%s\n' "$*"; }

usage() {
	sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

ROLE=""
ROOT=/
DRY_RUN=""
NO_START=""
PUBKEY=""
CONTROLLER="" TOKEN="" CA_PIN="" NODE_ID=""
LABELS=()
LISTEN="" HTTP_LISTEN="" ADVERTISE="" GOSSIP_LISTEN=""

parse_args() {
	(($# > 0)) || { usage >&2; exit 2; }
	case $1 in
	controller | agent) ROLE=$1 ;;
	-h | --help) usage; exit 0 ;;
	*) die "unknown role '$1': use 'install.sh controller' or 'install.sh agent ...' (--help lists the options)" ;;
	esac
	shift
	local opt val
	while (($# > 0)); do
		opt=$1
		shift
		case $opt in
		--dry-run) DRY_RUN=1; continue ;;
		--no-start) NO_START=1; continue ;;
		-h | --help) usage; exit 0 ;;
		--*=*) val=${opt#*=} opt=${opt%%=*} ;;
		--*)
			(($# > 0)) || die "$opt needs a value"
			val=$1
			shift
			;;
		*) die "unexpected argument '$opt' (--help lists the options)" ;;
		esac
		[[ $val != *$'\n'* ]] || die "$opt: the value has a line break"
		case $ROLE:$opt in
		*:--root) ROOT=$val ;;
		*:--public-key) PUBKEY=$val ;;
		*:--gossip-listen) GOSSIP_LISTEN=$val ;;
		controller:--listen) LISTEN=$val ;;
		controller:--http-listen) HTTP_LISTEN=$val ;;
		controller:--advertise) ADVERTISE=$val ;;
		agent:--controller) CONTROLLER=$val ;;
		agent:--token) TOKEN=$val ;;
		agent:--ca-pin) CA_PIN=$val ;;
		agent:--node-id) NODE_ID=$val ;;
		agent:--label)
			[[ $val == ?*=* ]] || die "--label $val: want key=value"
			LABELS+=("$val")
			;;
		*) die "unknown option $opt for 'install.sh $ROLE' (--help lists the options)" ;;
		esac
	done
	[[ $ROOT == /* ]] || ROOT=$(pwd)/$ROOT
	ROOT=$(realpath -m "$ROOT")
	if [[ $ROOT != / && -e $ROOT && ! -d $ROOT ]]; then
		die "--root $ROOT is not a folder"
	fi
}

# at PATH is PATH under the root.
at() {
	if [[ $ROOT == / ]]; then printf '%s' "$1"; else printf '%s%s' "$ROOT" "$1"; fi
}

# --- verification ---------------------------------------------------------

verify_signature() {
	[[ -n $PUBKEY ]] || {
		if [[ -e $BUNDLE/SHA256SUMS.sig ]]; then
			note "note: SHA256SUMS.sig was not checked (pass --public-key FILE to check it)"
		fi
		return 0
	}
	command -v ssh-keygen >/dev/null || die "--public-key needs ssh-keygen to check SHA256SUMS.sig (Debian: apt-get install openssh-client)"
	[[ -r $PUBKEY ]] || die "--public-key $PUBKEY: no such readable file"
	[[ -e $BUNDLE/SHA256SUMS.sig ]] || die "$BUNDLE/SHA256SUMS.sig is missing but --public-key was given: this bundle is not signed; refusing to install"
	local keytype key
	read -r keytype key _ <"$PUBKEY" || true
	[[ $keytype == ssh-ed25519 && -n $key ]] || die "--public-key $PUBKEY is not an ed25519 public key (want one 'ssh-ed25519 AAAA...' line, a .pub file)"
	local signers out
	signers=$(mktemp)
	printf '%s namespaces="%s" %s %s\n' "$NAMESPACE" "$NAMESPACE" "$keytype" "$key" >"$signers"
	if ! out=$(ssh-keygen -Y verify -f "$signers" -I "$NAMESPACE" -n "$NAMESPACE" -s "$BUNDLE/SHA256SUMS.sig" <"$BUNDLE/SHA256SUMS" 2>&1); then
		rm -f "$signers"
		die "SHA256SUMS.sig: the signature over SHA256SUMS does not verify with $PUBKEY (ssh-keygen: ${out%%$'\n'*}); the bundle may have been altered; refusing to install"
	fi
	rm -f "$signers"
	note "verified: SHA256SUMS is signed by $PUBKEY"
}

verify_sums() {
	[[ -f $BUNDLE/SHA256SUMS ]] || die "$BUNDLE/SHA256SUMS is missing: this is not a complete Ferry bundle; refusing to install"
	local out bad
	if ! out=$(cd "$BUNDLE" && sha256sum --check --strict SHA256SUMS 2>&1); then
		bad=$(printf '%s\n' "$out" | sed -n 's/: FAILED.*$//p' | paste -sd ' ' -)
		[[ -n $bad ]] || bad=$(printf '%s\n' "$out" | grep -v ': OK$' | head -n 3 | paste -sd ' ' -)
		die "checksum mismatch in $BUNDLE: $bad (does not match SHA256SUMS); the bundle is damaged or was altered; refusing to install"
	fi
	# A file the sums do not list was not checked: refuse it too, since
	# the config examples are installed by name.
	local listed extra
	listed=$(awk '{ sub(/^[^ ]+ [ *]/, ""); print }' "$BUNDLE/SHA256SUMS" | sort)
	extra=$(cd "$BUNDLE" && find . -type f ! -name SHA256SUMS ! -name SHA256SUMS.sig -printf '%P\n' | sort | comm -23 - <(printf '%s\n' "$listed") | paste -sd ' ' -)
	[[ -z $extra ]] || die "$BUNDLE has files SHA256SUMS does not list: $extra; the bundle was altered; refusing to install"
	note "verified: every file of the bundle matches SHA256SUMS ($(wc -l <"$BUNDLE/SHA256SUMS") files)"
}

check_platform() {
	local version os arch machine want
	read -r _ version os_arch _ <"$BUNDLE/VERSION" || die "$BUNDLE/VERSION is unreadable"
	VERSION=$version
	os=${os_arch%/*} arch=${os_arch#*/}
	machine=$(uname -m)
	case $machine in
	x86_64 | amd64) want=amd64 ;;
	aarch64 | arm64) want=arm64 ;;
	*) want=$machine ;;
	esac
	[[ $os == linux && $arch == "$want" ]] ||
		die "this bundle is for $os/$arch but this machine is $(uname -s)/$machine: use ferry-$VERSION-linux-$want.tar.gz"
}

# --- changes --------------------------------------------------------------

CHANGES=0
WARNED_OWNER=""

# change DESCRIPTION CMD... runs CMD (or, with --dry-run, only says it would).
change() {
	local what=$1
	shift
	CHANGES=$((CHANGES + 1))
	if [[ -n $DRY_RUN ]]; then
		note "would: $what"
		return 0
	fi
	note "  $what"
	"$@" || die "could not $what (see the message above)"
}

# indented CMD... runs CMD with its output indented under the change.
indented() {
	"$@" 2>&1 | sed 's/^/    /'
}

# id_of KIND NAME prints the numeric ID of a user (passwd) or group
# (group) under the root, or nothing.
id_of() {
	local file
	file=$(at "/etc/$1")
	[[ -r $file ]] || return 0
	awk -F: -v n="$2" '$1 == n { print $3; exit }' "$file"
}

# numeric USER GROUP prints uid:gid under the root ("" when unknown yet).
numeric() {
	local uid gid
	if [[ $1 == root ]]; then uid=0; else uid=$(id_of passwd "$1"); fi
	if [[ $2 == root ]]; then gid=0; else gid=$(id_of group "$2"); fi
	[[ -n $uid && -n $gid ]] && printf '%s:%s' "$uid" "$gid"
	return 0
}

# fix_meta PATH MODE USER GROUP sets mode and owner where they differ.
fix_meta() {
	local path=$1 mode=$2 user=$3 group=$4 owner have
	[[ -e $path ]] || return 0
	have=$(stat -c '%a' "$path")
	if [[ $have != "${mode#0}" ]]; then
		change "chmod $mode $path (was $have)" chmod "$mode" "$path"
	fi
	owner=$(numeric "$user" "$group")
	if [[ -z $owner ]]; then
		[[ -n $DRY_RUN ]] || die "user $user or group $group does not exist under $ROOT"
		return 0
	fi
	have=$(stat -c '%u:%g' "$path")
	[[ $have != "$owner" ]] || return 0
	if ((EUID != 0)); then
		[[ -n $WARNED_OWNER ]] || note "warning: not running as root: owners are left as they are (want $user:$group on $path)"
		WARNED_OWNER=1
		return 0
	fi
	change "chown $user:$group $path (was $have)" chown "$owner" "$path"
}

# own PATH USER GROUP gives a path just created its owner (as root; a
# run as another user leaves it, and fix_meta says so).
own() {
	local owner
	((EUID == 0)) || return 0
	owner=$(numeric "$2" "$3")
	[[ -n $owner ]] || die "user $2 or group $3 does not exist under $ROOT"
	chown "$owner" "$1"
}

# mkdir_owned PATH MODE USER GROUP
mkdir_owned() {
	install -d -m "$2" "$1"
	own "$1" "$3" "$4"
}

ensure_dir() {
	local path=$1 mode=$2 user=$3 group=$4
	if [[ ! -d $path ]]; then
		change "create $path ($mode $user:$group)" mkdir_owned "$path" "$mode" "$user" "$group"
	fi
	fix_meta "$path" "$mode" "$user" "$group"
}

# put SRC DEST MODE USER GROUP: copy atomically (a temporary file beside
# DEST with its mode and owner, then a rename), so a running binary or a
# reader never sees half a file.
put() {
	local src=$1 dest=$2 mode=$3
	install -d -m 0755 "$(dirname "$dest")"
	cp "$src" "$dest.ferry-tmp"
	chmod "$mode" "$dest.ferry-tmp"
	own "$dest.ferry-tmp" "$4" "$5"
	mv -f "$dest.ferry-tmp" "$dest"
}

# ensure_file SRC DEST MODE USER GROUP installs a file the bundle owns
# (binaries, units): replaced whenever it differs.
ensure_file() {
	local src=$1 dest=$2 mode=$3 user=$4 group=$5
	if [[ ! -e $dest ]]; then
		change "install $dest ($mode $user:$group)" put "$src" "$dest" "$mode" "$user" "$group"
	elif ! cmp -s "$src" "$dest"; then
		change "update $dest" put "$src" "$dest" "$mode" "$user" "$group"
	fi
	fix_meta "$dest" "$mode" "$user" "$group"
}

recorded_sum() {
	local rec
	rec=$(at "$RECORD")
	[[ -r $rec ]] || return 0
	awk -v p="$1" '$2 == p { s = $1 } END { if (s != "") print s }' "$rec"
}

# record_sum PATH records the checksum of the config file PATH (relative to
# the root) as installed by the bundle.
record_sum() {
	local rec sum
	rec=$(at "$RECORD")
	sum=$(sha256sum <"$(at "$1")" | cut -d' ' -f1)
	[[ $(recorded_sum "$1") != "$sum" ]] || return 0
	install -d -m 0755 "$(dirname "$rec")"
	{
		[[ ! -r $rec ]] || awk -v p="$1" '$2 != p' "$rec"
		printf '%s %s\n' "$sum" "$1"
	} >"$rec.tmp"
	mv -f "$rec.tmp" "$rec"
}

# ensure_conffile SRC PATH MODE USER GROUP installs a config file (PATH is
# relative to the root) the way dpkg treats conffiles: a file nobody edited
# follows the bundle; an edited one is kept and the new version is written
# beside it as PATH.new.
ensure_conffile() {
	local src=$1 path=$2 mode=$3 user=$4 group=$5 dest cur rec
	dest=$(at "$path")
	if [[ ! -e $dest ]]; then
		change "install $dest ($mode $user:$group)" put "$src" "$dest" "$mode" "$user" "$group"
	elif ! cmp -s "$src" "$dest"; then
		cur=$(sha256sum <"$dest" | cut -d' ' -f1)
		rec=$(recorded_sum "$path")
		if [[ $cur == "$rec" ]]; then
			change "update $dest (not edited since it was installed)" put "$src" "$dest" "$mode" "$user" "$group"
		elif [[ ! -e $dest.new ]] || ! cmp -s "$src" "$dest.new"; then
			change "keep $dest (edited here); the bundle's version is written to $dest.new" put "$src" "$dest.new" "$mode" "$user" "$group"
			fix_meta "$dest.new" "$mode" "$user" "$group"
		else
			note "kept $dest (edited here); the bundle's version is in $dest.new"
		fi
	fi
	fix_meta "$dest" "$mode" "$user" "$group"
	if [[ -z $DRY_RUN ]] && cmp -s "$src" "$dest"; then
		record_sum "$path"
	fi
}

# --- config files ---------------------------------------------------------

# render EXAMPLE OUT KEY=VALUE... writes the example with each KEY set:
# the first line that sets or comments out KEY at the top level becomes
# `KEY: "VALUE"`; a key the example does not mention is appended.
render() {
	local example=$1 out=$2
	shift 2
	cp "$example" "$out"
	local kv key val
	for kv in "$@"; do
		key=${kv%%=*} val=${kv#*=}
		val=${val//\\/\\\\}
		val=${val//\"/\\\"}
		awk -v key="$key" -v val="$val" '
			!done && ($0 ~ "^#? ?" key ":" ) { print key ": \"" val "\""; done = 1; next }
			{ print }
			END { if (!done) print key ": \"" val "\"" }' "$out" >"$out.tmp"
		mv -f "$out.tmp" "$out"
	done
}

# setting FILE KEY VALUE adds KEY=VALUE to SETTINGS; without a
# VALUE (the option was not given), the value install.sh wrote into the
# installed FILE before is kept, so a second run or an upgrade without the
# option does not take the setting back.
setting() {
	local file=$1 key=$2 val=$3 cur
	if [[ -z $val ]]; then
		cur=$(at "$CONF_DIR/$file")
		[[ -r $cur ]] || return 0
		val=$(awk -v key="$key" 'index($0, key ": \"") == 1 {
				v = substr($0, length(key) + 4); sub(/"$/, "", v)
				gsub(/\\"/, "\"", v); gsub(/\\\\/, "\\", v); print v; exit }' "$cur")
		[[ -n $val ]] || return 0
	fi
	SETTINGS+=("$key=$val")
}
SETTINGS=()

# check_settings refuses, before anything changes, settings this bundle has
# no config file to write into.
check_settings() {
	if [[ $ROLE == controller && -z $(example controller.yaml) && -n $LISTEN$HTTP_LISTEN$ADVERTISE$GOSSIP_LISTEN ]]; then
		die "this bundle has no deployments/config/controller.yaml to write --listen, --http-listen, --advertise or --gossip-listen into"
	fi
	if [[ $ROLE == agent && -z $(example agent.yaml) && -n $GOSSIP_LISTEN ]]; then
		die "this bundle has no deployments/config/agent.yaml to write --gossip-listen into"
	fi
}

# example NAME prints the bundle's example config NAME (controller.yaml,
# agent.yaml), or nothing if the bundle has none.
example() {
	local f=$BUNDLE/deployments/config/$1
	[[ -f $f ]] && printf '%s' "$f"
	return 0
}

# --- the user -------------------------------------------------------------

ensure_user() {
	if [[ -n $(id_of passwd "$USER_NAME") && -n $(id_of group "$USER_NAME") ]]; then
		return 0
	fi
	if command -v systemd-sysusers >/dev/null; then
		if [[ -n $DRY_RUN ]]; then
			change "create the $USER_NAME user (systemd-sysusers $SYSUSERS)" true
			return 0
		fi
		local args=()
		[[ $ROOT == / ]] || args+=("--root=$ROOT")
		change "create the $USER_NAME user (systemd-sysusers $SYSUSERS)" indented systemd-sysusers "${args[@]}" "$(at "$SYSUSERS")"
	else
		command -v useradd >/dev/null || die "neither systemd-sysusers nor useradd is here to create the $USER_NAME user (Debian: apt-get install passwd)"
		local args=(--system --user-group --home-dir "$CONTROLLER_DATA" --no-create-home --shell /usr/sbin/nologin --comment "Ferry controller")
		if [[ $ROOT != / ]]; then
			args+=(--prefix "$ROOT")
			# useradd --prefix edits the root's files but does not create them.
			local f
			for f in passwd group shadow gshadow; do
				[[ -e $(at "/etc/$f") || -n $DRY_RUN ]] || install -m "$([[ $f == *shadow ]] && echo 0600 || echo 0644)" /dev/null "$(at "/etc/$f")"
			done
		fi
		change "create the $USER_NAME user (useradd)" indented useradd "${args[@]}" "$USER_NAME"
	fi
	if [[ -z $DRY_RUN && -z $(id_of passwd "$USER_NAME") ]]; then
		die "the $USER_NAME user was not created under $ROOT (see the messages above)"
	fi
}

# --- services -------------------------------------------------------------

UNIT_CHANGED=""
RESTART_NEEDED=""

# start_service NAME COMMAND... enables and starts (or restarts after a
# change) the unit where systemd runs; elsewhere it prints COMMAND, the way
# to start the daemon by hand.
start_service() {
	local unit=$1
	shift
	if [[ $ROOT != / ]]; then
		note "not started (--root never touches this host's systemd); to run it:"
		note "  $*"
		return 0
	fi
	if [[ ! -d /run/systemd/system ]]; then
		note "systemd is not running on this host; start the daemon with:"
		note "  $*"
		return 0
	fi
	if [[ -n $UNIT_CHANGED ]]; then
		change "systemctl daemon-reload" systemctl daemon-reload
	fi
	if ! systemctl is-enabled --quiet "$unit" 2>/dev/null; then
		change "systemctl enable $unit" systemctl enable --quiet "$unit"
	fi
	if [[ -n $NO_START ]]; then
		note "not started (--no-start): systemctl start $unit"
	elif ! systemctl is-active --quiet "$unit"; then
		change "systemctl start $unit" systemctl start "$unit"
	elif [[ -n $RESTART_NEEDED ]]; then
		change "systemctl restart $unit (its files changed)" systemctl restart "$unit"
	fi
}

# track N: the count of changes before a group of steps, so that a change
# among them asks for a restart.
track() {
	if ((CHANGES > $1)); then RESTART_NEEDED=1; fi
}

installed_version() {
	local bin=$1
	[[ -x $bin ]] || return 0
	"$bin" --version 2>/dev/null | awk '{ print $2; exit }' || true
}

install_common_dirs() {
	ensure_dir "$(at "$CONF_DIR")" 0755 root root
}

# install_unit NAME installs the systemd unit NAME, noting a change for
# daemon-reload.
install_unit() {
	local before=$CHANGES
	ensure_file "$BUNDLE/deployments/systemd/$1" "$(at "$UNIT_DIR/$1")" 0644 root root
	((CHANGES == before)) || UNIT_CHANGED=1
}

# install_config NAME MODE GROUP renders the bundle's example NAME with
# SETTINGS into /etc/ferry/NAME (see ensure_conffile) and sets CONFIG_ARGS
# to the daemon's --config flag; without an example it says so.
CONFIG_ARGS=()
install_config() {
	local name=$1 mode=$2 group=$3 ex
	ex=$(example "$name")
	if [[ -z $ex ]]; then
		note "note: this bundle has no example $name; the daemon runs with its defaults"
		return 0
	fi
	render "$ex" "$WORK/$name" ${SETTINGS[@]+"${SETTINGS[@]}"}
	ensure_conffile "$WORK/$name" "$CONF_DIR/$name" "$mode" root "$group"
	CONFIG_ARGS=(--config "$(at "$CONF_DIR/$name")")
}

install_controller() {
	local before
	install_common_dirs
	ensure_file "$BUNDLE/deployments/systemd/ferry.sysusers" "$(at "$SYSUSERS")" 0644 root root
	ensure_user
	ensure_dir "$(at "$CONTROLLER_DATA")" 0700 "$USER_NAME" "$USER_NAME"
	before=$CHANGES
	ensure_file "$BUNDLE/bin/ferry-controller" "$(at "$BIN_DIR/ferry-controller")" 0755 root root
	ensure_file "$BUNDLE/bin/ferryctl" "$(at "$BIN_DIR/ferryctl")" 0755 root root
	install_unit ferry-controller.service
	[[ $ROOT == / ]] || SETTINGS+=("data-dir=$(at "$CONTROLLER_DATA")")
	setting controller.yaml listen "$LISTEN"
	setting controller.yaml http-listen "$HTTP_LISTEN"
	setting controller.yaml advertise "$ADVERTISE"
	setting controller.yaml gossip-listen "$GOSSIP_LISTEN"
	install_config controller.yaml 0640 "$USER_NAME"
	track "$before"
	start_service ferry-controller.service "$(at "$BIN_DIR/ferry-controller")" ${CONFIG_ARGS[@]+"${CONFIG_ARGS[@]}"}
}

install_agent() {
	local before
	install_common_dirs
	ensure_dir "$(at "$AGENT_STATE")" 0700 root root
	before=$CHANGES
	ensure_file "$BUNDLE/bin/ferry-agent" "$(at "$BIN_DIR/ferry-agent")" 0755 root root
	install_unit ferry-agent.service
	[[ $ROOT == / ]] || SETTINGS+=("state-dir=$(at "$AGENT_STATE")" "root=$ROOT")
	setting agent.yaml gossip-listen "$GOSSIP_LISTEN"
	install_config agent.yaml 0644 root
	track "$before"
	enroll
	start_service ferry-agent.service "$(at "$BIN_DIR/ferry-agent")" run ${CONFIG_ARGS[@]+"${CONFIG_ARGS[@]}"}
}

enroll() {
	local state
	state=$(at "$AGENT_STATE")
	if [[ -e $state/identity.json ]]; then
		[[ -z $TOKEN ]] || note "already enrolled ($state/identity.json); --token is not used (to enroll again, remove $state first)"
		return 0
	fi
	[[ -n $CONTROLLER && -n $TOKEN && -n $CA_PIN ]] ||
		die "the node is not enrolled yet: give --controller HOST:PORT --token T --ca-pin sha256:HEX (the line 'ferryctl token create' prints)"
	local args=(enroll --controller "$CONTROLLER" --token "$TOKEN" --ca-pin "$CA_PIN" --state-dir "$state")
	[[ -z $NODE_ID ]] || args+=(--node-id "$NODE_ID")
	local l
	for l in ${LABELS[@]+"${LABELS[@]}"}; do args+=(--label "$l"); done
	local shown=${args[*]}
	shown=${shown//"$TOKEN"/***}
	CHANGES=$((CHANGES + 1))
	if [[ -n $DRY_RUN ]]; then
		note "would: ferry-agent $shown"
		return 0
	fi
	note "  ferry-agent $shown"
	indented "$(at "$BIN_DIR/ferry-agent")" "${args[@]}" || die "enrollment failed (see above); the files listed above are installed, and install.sh run again with a token that works enrolls the node"
	RESTART_NEEDED=1
}

main() {
	parse_args "$@"
	verify_signature
	verify_sums
	check_platform
	check_settings
	if [[ -z $DRY_RUN && $ROOT == / ]] && ((EUID != 0)); then
		die "installing on this host needs root (or use --root DIR for a trial, --dry-run to see what it would do)"
	fi
	WORK=$(mktemp -d)
	trap 'rm -rf "$WORK"' EXIT
	local bin=ferry-agent old
	[[ $ROLE == agent ]] || bin=ferry-controller
	old=$(installed_version "$(at "$BIN_DIR/$bin")")
	local where=""
	[[ $ROOT == / ]] || where=" under $ROOT"
	if [[ -n $old && $old != "$VERSION" ]]; then
		note "upgrading the ferry $ROLE from $old to $VERSION$where (state and edited config files are kept)"
	else
		note "installing the ferry $ROLE $VERSION$where${DRY_RUN:+ (dry run: nothing is changed)}"
	fi
	"install_$ROLE"
	if ((CHANGES == 0)); then
		note "nothing to change: the ferry $ROLE $VERSION is installed$where as this bundle has it"
	elif [[ -n $DRY_RUN ]]; then
		note "dry run: $CHANGES changes would be made; nothing was changed"
	else
		note "done: $CHANGES changes"
	fi
}

main "$@"
