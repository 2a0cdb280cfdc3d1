#!/usr/bin/env bash
# Build the Plexus release image from the top-level Dockerfile, pulling
# nothing: the binary built on this host (and, for a glibc build, the shared
# libraries it links and the loader) goes into `FROM scratch`.
#
#   deploy/image.sh [TAG]        default tag plexus:local
#
# Environment: PLEXUS_BIN (default target/release/plexus, else
# target/debug/plexus), PLEXUS_IMAGE_LABELS (extra `--label k=v` words).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=deploy/lib/rootfs.sh
. "$root/deploy/lib/rootfs.sh"
tag="${1:-plexus:local}"
bin="${PLEXUS_BIN:-}"
if [ -z "$bin" ]; then
  bin="$root/target/release/plexus"
  [ -x "$bin" ] || bin="$root/target/debug/plexus"
fi
# The Dockerfile copies target/docker-image/ (see .dockerignore: nothing
# else of the checkout is sent to the builder).
stage="$root/target/docker-image"
rm -rf "$stage"
stage_rootfs "$bin" "$stage/rootfs"
mkdir -p "$stage/data"
# shellcheck disable=SC2086
docker build ${PLEXUS_IMAGE_LABELS:-} -t "$tag" -f "$root/Dockerfile" "$root" >&2
echo "$tag"
