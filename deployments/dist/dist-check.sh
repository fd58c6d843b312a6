#!/usr/bin/env bash
# Check that the release bundles are reproducible: build them twice from
# this commit, into two folders, the second time with an empty Go build
# cache (so nothing is reused from the first), and fail unless every
# tarball and SHA256SUMS is byte-identical.
#
#   make dist-check VERSION=1.4.0 [PLATFORMS="linux/amd64"]
set -euo pipefail
export LC_ALL=C

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
[[ $# -eq 1 ]] || { echo "usage: dist-check.sh VERSION" >&2; exit 1; }
VERSION=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

start=$SECONDS
"$REPO/deployments/dist/dist.sh" "$VERSION" "$work/a" >/dev/null
first=$((SECONDS - start))
start=$SECONDS
GOCACHE=$work/gocache "$REPO/deployments/dist/dist.sh" "$VERSION" "$work/b" >/dev/null
second=$((SECONDS - start))

echo "first build ${first}s, second build (empty Go build cache) ${second}s"
(cd "$work/a" && sha256sum ./*.tar.gz SHA256SUMS)
if ! diff <(cd "$work/a" && sha256sum ./*.tar.gz SHA256SUMS) <(cd "$work/b" && sha256sum ./*.tar.gz SHA256SUMS); then
	echo "dist-check: the two builds differ (left: first, right: second); the bundles are not reproducible" >&2
	exit 1
fi
echo "dist-check: both builds are byte-identical"
