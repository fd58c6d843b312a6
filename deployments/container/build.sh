#!/usr/bin/env bash
# Build the controller's container image from deployments/container/Containerfile
# with the first of podman, buildah or docker that can build here.
#
#   make image [IMAGE=ferry-controller:1.4.0]
#   deployments/container/build.sh IMAGE VERSION COMMIT
#
# Exits non-zero, saying what is missing, when none of them can.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
[[ $# -eq 3 ]] || { echo "usage: build.sh IMAGE VERSION COMMIT" >&2; exit 2; }
IMAGE=$1 VERSION=$2 COMMIT=$3
FILE=$REPO/deployments/container/Containerfile
ARGS=(--build-arg "VERSION=$VERSION" --build-arg "COMMIT=$COMMIT")
[[ -z ${GOPROXY:-} ]] || ARGS+=(--build-arg "GOPROXY=$GOPROXY")

tried=()
if command -v podman >/dev/null; then
	echo "make image: building $IMAGE with podman"
	exec podman build -f "$FILE" -t "$IMAGE" "${ARGS[@]}" "$REPO"
fi
if command -v buildah >/dev/null; then
	echo "make image: building $IMAGE with buildah"
	exec buildah build -f "$FILE" -t "$IMAGE" "${ARGS[@]}" "$REPO"
fi
if command -v docker >/dev/null; then
	if docker info >/dev/null 2>&1; then
		echo "make image: building $IMAGE with docker"
		exec docker build -f "$FILE" -t "$IMAGE" "${ARGS[@]}" "$REPO"
	fi
	tried+=("docker is installed ($(command -v docker)) but its daemon does not answer (docker info fails): start it, or install podman or buildah")
fi
{
	echo "make image: cannot build $IMAGE: none of podman, buildah or docker can build here."
	for t in ${tried[@]+"${tried[@]}"}; do echo "  $t"; done
	echo "  Install one (Debian: apt-get install podman, or buildah), or build the image on another machine"
	echo "  from deployments/container/Containerfile and carry it in (podman save / podman load)."
} >&2
exit 1
