#!/usr/bin/env bash
# Build Ferry's release bundles: one tarball per platform with the three
# static binaries, the systemd units, the sysusers file, the example config
# files, the README and docs and install.sh, each with its own SHA256SUMS;
# and a SHA256SUMS over the tarballs beside them.
#
#   make dist VERSION=1.4.0 [SIGNING_KEY=path/to/ed25519-key] [PLATFORMS="linux/amd64"]
#   deployments/dist/dist.sh VERSION [OUT_DIR]     (what make dist runs)
#
# The bundles are reproducible: the same commit gives the same bytes, on any
# machine with the same Go toolchain and wherever the checkout lives
# (-trimpath, no build ID, file times set to the commit's time
# (SOURCE_DATE_EPOCH), owners 0:0, entries sorted, gzip without a name or
# time). `make dist-check` builds twice, the second time with an empty Go
# build cache, and compares.
#
# With SIGNING_KEY (an OpenSSH ed25519 private key), both SHA256SUMS files
# get a detached signature, SHA256SUMS.sig, made with
#   ssh-keygen -Y sign -n ferry-release
# which anyone can check with ssh-keygen -Y verify (see the README), and
# which install.sh checks when given --public-key. Ed25519 signatures are
# deterministic, so a signed build is reproducible too.
#
# Environment: SIGNING_KEY, PLATFORMS (default "linux/amd64 linux/arm64"),
# SOURCE_DATE_EPOCH (default: the commit's time), GO (default go).
set -euo pipefail
umask 022
export LC_ALL=C TZ=UTC

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
GO=${GO:-go}
PLATFORMS=${PLATFORMS:-linux/amd64 linux/arm64}
NAMESPACE=ferry-release

die() { printf 'dist: %s\n' "$*" >&2; exit 1; }

[[ $# -ge 1 && $# -le 2 ]] || die "usage: dist.sh VERSION [OUT_DIR] (e.g. make dist VERSION=1.4.0)"
VERSION=$1
OUT=$(realpath -m "${2:-$REPO/dist}")
[[ $VERSION =~ ^[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.+-]+)?$ ]] ||
	die "VERSION=$VERSION is not a release version like 1.4.0 or 1.4.0-rc.1: pass it as make dist VERSION=x.y.z"

cd "$REPO"
COMMIT=$(git rev-parse --short=12 HEAD 2>/dev/null) || die "$REPO is not a git checkout: the bundle's time and commit stamp come from git"
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct HEAD)}
export SOURCE_DATE_EPOCH
if [[ -n $(git status --porcelain --untracked-files=no 2>/dev/null) ]]; then
	echo "dist: warning: the work tree has uncommitted changes; the bundle is not reproducible from commit $COMMIT alone" >&2
fi

if [[ -n ${SIGNING_KEY:-} ]]; then
	command -v ssh-keygen >/dev/null || die "SIGNING_KEY is set but ssh-keygen is missing (Debian: apt-get install openssh-client)"
	[[ -r $SIGNING_KEY ]] || die "SIGNING_KEY=$SIGNING_KEY: no such readable file"
	keytype=$(ssh-keygen -l -f "$SIGNING_KEY" 2>/dev/null) || die "SIGNING_KEY=$SIGNING_KEY is not an OpenSSH key (make one with ssh-keygen -t ed25519 -f KEY)"
	[[ $keytype == *"(ED25519)" ]] || die "SIGNING_KEY=$SIGNING_KEY is not an ed25519 key ($keytype); make one with ssh-keygen -t ed25519 -f KEY"
fi

# sign FILE writes FILE.sig when a signing key is given.
sign() {
	[[ -n ${SIGNING_KEY:-} ]] || return 0
	rm -f "$1.sig"
	ssh-keygen -q -Y sign -f "$SIGNING_KEY" -n "$NAMESPACE" "$1" >/dev/null 2>&1 </dev/null ||
		die "ssh-keygen -Y sign -f $SIGNING_KEY $1 failed (a key with a passphrase needs ssh-agent)"
}

# sums DIR writes DIR/SHA256SUMS over every other file under DIR, sorted.
sums() {
	(cd "$1" && find . -type f ! -name SHA256SUMS ! -name SHA256SUMS.sig -printf '%P\n' | sort |
		xargs -d '\n' sha256sum >"$1.sums")
	mv "$1.sums" "$1/SHA256SUMS"
}

LDFLAGS="-s -w -buildid= -X github.com/ferrydeploy/ferry/shared/version.Version=$VERSION -X github.com/ferrydeploy/ferry/shared/version.Commit=$COMMIT"

# build GOOS GOARCH DIR builds the three binaries into DIR.
build() {
	local os=$1 arch=$2 dir=$3
	(cd controller && CGO_ENABLED=0 GOOS=$os GOARCH=$arch "$GO" build -trimpath -ldflags "$LDFLAGS" -o "$dir/ferry-controller" ./cmd/ferry-controller)
	(cd controller && CGO_ENABLED=0 GOOS=$os GOARCH=$arch "$GO" build -trimpath -ldflags "$LDFLAGS" -o "$dir/ferryctl" ./cmd/ferryctl)
	(cd agent && CGO_ENABLED=0 GOOS=$os GOARCH=$arch "$GO" build -trimpath -ldflags "$LDFLAGS" -o "$dir/ferry-agent" ./cmd/ferry-agent)
}

# copy MODE DEST FILE... installs files into the bundle with a fixed mode.
copy() {
	local mode=$1 dest=$2
	shift 2
	install -d -m 0755 "$dest"
	install -m "$mode" "$@" "$dest/"
}

mkdir -p "$OUT"
STAGE=$(mktemp -d "$OUT/.stage.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
tarballs=()
for platform in $PLATFORMS; do
	os=${platform%/*} arch=${platform#*/}
	[[ $os == linux && ($arch == amd64 || $arch == arm64) ]] || die "platform $platform: Ferry ships linux/amd64 and linux/arm64"
	name=ferry-$VERSION-$os-$arch
	b=$STAGE/$name
	echo "dist: building $name (commit $COMMIT, SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH)"
	install -d -m 0755 "$b/bin"
	build "$os" "$arch" "$b/bin"
	chmod 0755 "$b"/bin/*
	copy 0755 "$b" deployments/dist/install.sh
	copy 0644 "$b" README.md
	copy 0644 "$b/docs" docs/*.md
	copy 0644 "$b/deployments/systemd" deployments/systemd/*
	shopt -s nullglob
	configs=(deployments/config/*.yaml)
	shopt -u nullglob
	((${#configs[@]} == 0)) || copy 0644 "$b/deployments/config" "${configs[@]}"
	copy 0644 "$b/deployments/prometheus" deployments/prometheus/*
	copy 0644 "$b/deployments/grafana" deployments/grafana/*
	printf 'ferry %s %s/%s commit %s\n' "$VERSION" "$os" "$arch" "$COMMIT" >"$b/VERSION"
	chmod 0644 "$b/VERSION"
	sums "$b"
	sign "$b/SHA256SUMS"
	tarball=$OUT/$name.tar.gz
	tar -C "$STAGE" --sort=name --format=gnu --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner \
		-cf - "$name" | gzip -n -9 >"$tarball.tmp"
	mv "$tarball.tmp" "$tarball"
	tarballs+=("$name.tar.gz")
done

# The outer SHA256SUMS lists the tarballs this run built.
(cd "$OUT" && sha256sum "${tarballs[@]}" >"SHA256SUMS.tmp" && mv SHA256SUMS.tmp SHA256SUMS)
sign "$OUT/SHA256SUMS"
echo "dist: done in $OUT:"
(cd "$OUT" && ls -l "${tarballs[@]}" SHA256SUMS ${SIGNING_KEY:+SHA256SUMS.sig} && cat SHA256SUMS)
