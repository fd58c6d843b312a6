#!/usr/bin/env bash
# Build the controller's container image from a release bundle, offline:
# deployments/container/Containerfile has only FROM scratch stages, so the
# build pulls no image and runs nothing inside a container (no RUN), which
# is what works in an air-gapped data center and on a build host without
# a container runtime. It takes the static binaries from the bundle
# (verified against its SHA256SUMS first), the CA certificates from this
# host, and a passwd/group naming the non-root user ferry (65532).
#
#   make image [VERSION=1.4.0] [IMAGE=ferry-controller:1.4.0] [BUNDLE=dist/ferry-1.4.0-linux-amd64.tar.gz]
#   deployments/container/build.sh IMAGE VERSION COMMIT
#
# Environment:
#   BUNDLE     the bundle to build from (default dist/ferry-VERSION-linux-ARCH.tar.gz,
#              built with deployments/dist/dist.sh when missing; a VERSION that is
#              not a release version, e.g. git describe's, becomes 0.0.0-dev+VERSION)
#   ARCH       amd64 or arm64 (default this host's); no emulation is needed for
#              either, since nothing runs during the build
#   CA_BUNDLE  the CA certificates to put in the image (default
#              /etc/ssl/certs/ca-certificates.crt; internal PKI: your own bundle)
#   BUILDER    podman, buildah or docker (default: the first of them that works)
#
# Exits non-zero, saying what is missing, when no builder can build here.
set -euo pipefail
export LC_ALL=C

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
[[ $# -eq 3 ]] || { echo "usage: build.sh IMAGE VERSION COMMIT" >&2; exit 2; }
IMAGE=$1 VERSION=$2 COMMIT=$3
die() { printf 'make image: %s\n' "$*" >&2; exit 1; }

# The builder: podman and buildah as root or rootless need nothing else
# here (no RUN: no runtime, no isolation); docker needs its daemon.
builder=${BUILDER:-}
tried=()
if [[ -z $builder ]]; then
	for b in podman buildah docker; do
		command -v "$b" >/dev/null || continue
		case $b in
		podman) if podman info >/dev/null 2>&1; then builder=podman; break; fi
			tried+=("podman is installed but 'podman info' fails: $(podman info 2>&1 | tail -1)") ;;
		buildah) if buildah info >/dev/null 2>&1; then builder=buildah; break; fi
			tried+=("buildah is installed but 'buildah info' fails: $(buildah info 2>&1 | tail -1)") ;;
		docker) if docker info >/dev/null 2>&1; then builder=docker; break; fi
			tried+=("docker is installed ($(command -v docker)) but its daemon does not answer (docker info fails): start it, or install podman or buildah") ;;
		esac
	done
fi
if [[ -z $builder ]]; then
	{
		echo "make image: cannot build $IMAGE: none of podman, buildah or docker can build here."
		for t in ${tried[@]+"${tried[@]}"}; do echo "  $t"; done
		echo "  Install one (Debian: apt-get install podman, or buildah), or build the image on another machine"
		echo "  from the release bundle and carry it in (podman save / podman load)."
	} >&2
	exit 1
fi

if [[ -z ${ARCH:-} ]]; then
	case $(uname -m) in
	x86_64) ARCH=amd64 ;;
	aarch64 | arm64) ARCH=arm64 ;;
	*) die "this host is $(uname -m): set ARCH=amd64 or ARCH=arm64" ;;
	esac
fi
[[ $ARCH == amd64 || $ARCH == arm64 ]] || die "ARCH=$ARCH: Ferry ships amd64 and arm64"
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
[[ -r $CA_BUNDLE ]] || die "no CA certificates at $CA_BUNDLE (Debian: apt-get install ca-certificates), or set CA_BUNDLE to your internal CA bundle"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The bundle: given, or built for this commit.
if [[ -z ${BUNDLE:-} ]]; then
	bversion=$VERSION
	[[ $bversion =~ ^[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.+-]+)?$ ]] || bversion=0.0.0-dev+$VERSION
	BUNDLE=$REPO/dist/ferry-$bversion-linux-$ARCH.tar.gz
	if [[ ! -f $BUNDLE ]]; then
		echo "make image: building the bundle $(basename "$BUNDLE") first"
		PLATFORMS=linux/$ARCH "$REPO/deployments/dist/dist.sh" "$bversion" "$work/dist" >/dev/null
		BUNDLE=$work/dist/$(basename "$BUNDLE")
	fi
fi
[[ -f $BUNDLE ]] || die "BUNDLE=$BUNDLE: no such file"
name=$(basename "$BUNDLE" .tar.gz)
[[ $name == ferry-*-linux-"$ARCH" ]] || die "$BUNDLE is not a linux/$ARCH Ferry bundle (ferry-VERSION-linux-$ARCH.tar.gz); set ARCH or BUNDLE"

# Verify before anything goes into the image: the tarball against the
# SHA256SUMS beside it (when there is one), every file against the
# bundle's own SHA256SUMS.
sums=$(dirname "$BUNDLE")/SHA256SUMS
if [[ -f $sums ]] && grep -q " $name.tar.gz\$" "$sums"; then
	(cd "$(dirname "$BUNDLE")" && grep " $name.tar.gz\$" SHA256SUMS | sha256sum -c --quiet -) ||
		die "$BUNDLE does not match $sums: the bundle was altered or damaged"
fi
mkdir -p "$work/x" "$work/ctx"
tar -xzf "$BUNDLE" -C "$work/x"
[[ -f $work/x/$name/SHA256SUMS ]] || die "$BUNDLE has no $name/SHA256SUMS"
(cd "$work/x/$name" && sha256sum -c --quiet SHA256SUMS) || die "$BUNDLE: files do not match its SHA256SUMS"
cp "$BUNDLE" "$work/ctx/bundle.tar.gz"
# The image's labels name what is in it: the bundle's version and commit.
read -r _ VERSION _ _ COMMIT <"$work/x/$name/VERSION"

# rootfs.tar: the files around the binaries, with their owners and modes.
r=$work/rootfs
install -d -m 0755 "$r/etc/ssl/certs" "$r/etc/ferry"
printf 'root:x:0:0:root:/root:/sbin/nologin\nferry:x:65532:65532:Ferry controller:/var/lib/ferry-controller:/sbin/nologin\n' >"$r/etc/passwd"
printf 'root:x:0:\nferry:x:65532:\n' >"$r/etc/group"
install -m 0644 "$CA_BUNDLE" "$r/etc/ssl/certs/ca-certificates.crt"
install -m 0644 "$REPO/deployments/container/controller.yaml" "$r/etc/ferry/controller.yaml"
chmod 0644 "$r/etc/passwd" "$r/etc/group"
install -d -m 1777 "$r/tmp"
install -d -m 0700 "$r/var/lib/ferry-controller"
epoch=$(git -C "$REPO" log -1 --format=%ct HEAD 2>/dev/null || echo 0)
tarflags=(--sort=name --format=gnu --mtime="@$epoch" --numeric-owner)
tar -C "$r" "${tarflags[@]}" --owner=0 --group=0 -cf "$work/ctx/rootfs.tar" etc tmp
tar -C "$r" "${tarflags[@]}" --owner=0 --group=0 --no-recursion -rf "$work/ctx/rootfs.tar" var var/lib
tar -C "$r" "${tarflags[@]}" --owner=65532 --group=65532 -rf "$work/ctx/rootfs.tar" var/lib/ferry-controller

args=(-f "$REPO/deployments/container/Containerfile" -t "$IMAGE" --platform "linux/$ARCH"
	--build-arg "VERSION=$VERSION" --build-arg "COMMIT=$COMMIT")
case $builder in
# The image's times are the commit's, so the same bundle gives the same image.
podman | buildah) args+=(--timestamp "$epoch" --network none --pull=never --layers=false) ;;
esac
echo "make image: building $IMAGE (linux/$ARCH) from $(basename "$BUNDLE") with $builder"
"$builder" build "${args[@]}" "$work/ctx"
echo "make image: built $IMAGE; run it with:"
echo "  $builder run -d --name ferry -p 7443:7443 -p 7080:7080 -p 7946:7946 -p 7946:7946/udp -v ferry-data:/var/lib/ferry-controller $IMAGE --advertise HOST:7443"
