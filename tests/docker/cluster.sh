#!/usr/bin/env bash
# A 3-node Plexus cluster in Docker: one container per node, on its own
# bridge network, each with its own address and a bind-mounted data dir.
#
#   tests/docker/cluster.sh up      build the image, start the cluster, wait until
#                                   every node sees three members up; prints KEY=VALUE
#                                   lines (also written to $DATA/cluster.env)
#   tests/docker/cluster.sh down RUN   remove that run's containers, networks, image tag
#                                   and (if this script created it) its data dir
#   tests/docker/cluster.sh prune   remove everything any run left behind (by label)
#   tests/docker/cluster.sh prune-orphans   remove the runs whose owner process
#                                   (PLEXUS_DOCKER_OWNER at `up`) no longer exists
#   tests/docker/cluster.sh image   only build the image (prints its tag)
#
# Nothing is pulled: the image is `FROM scratch` with the plexus binary, the
# shared libraries `ldd` names and the dynamic loader (see Dockerfile).
#
# Two networks per run: plexus-<run> (the nodes, at .11 .12 .13) and
# plexus-<run>-side (empty; tests move a node there to partition it).
#
# Environment (all optional):
#   PLEXUS_BIN            binary to package (default target/debug/plexus)
#   PLEXUS_DOCKER_RUN     run id (default: random); names are plexus-<run>-...
#   PLEXUS_DOCKER_DATA    host dir holding node1/ node2/ node3/ data dirs (default: mktemp)
#   PLEXUS_DOCKER_CATALOG host dir of extra plugin manifests, mounted read-only at /catalog
#   PLEXUS_NODE{1,2,3}_PLUGINS  comma-separated plugins per node (default: as cluster-config/node*.toml)
#   PLEXUS_NODE{1,2,3}_CLOCK_SKEW_MS  fault injection: that node's wall-clock offset in ms
#                         (passed as PLEXUS_CLOCK_SKEW_MS; see docs/operator.md)
#   PLEXUS_COOKIE         cluster cookie (default: random per run)
#   PLEXUS_DOCKER_TIMEOUT seconds to wait for the cluster to form (default 90)
#   PLEXUS_DOCKER_OWNER   pid of the process that owns the run (the Rust tests set it,
#                         so a later run removes what a killed test left behind)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
LABEL=plexus.test=docker
OWNER_LABEL="plexus.owner=${PLEXUS_DOCKER_OWNER:-none}"

die() { echo "cluster.sh: $*" >&2; exit 1; }

bin_path() {
  local b="${PLEXUS_BIN:-$root/target/debug/plexus}"
  [ -x "$b" ] || die "$b is not an executable: build it first (cargo build -p plexus-cli) or set PLEXUS_BIN"
  echo "$b"
}

# Assemble the build context: the binary (stripped copy), every shared
# library ldd lists (the vDSO has no file and is skipped) and the loader, at
# the paths the binary looks for them.
build_image() {
  local run="$1" bin ctx tag
  bin="$(bin_path)"
  tag="plexus-test:$run"
  ctx="$(mktemp -d "${TMPDIR:-/tmp}/plexus-docker-ctx.XXXXXX")"
  # shellcheck disable=SC2064
  trap "rm -rf '$ctx'" RETURN
  cp "$bin" "$ctx/plexus"
  strip "$ctx/plexus" 2>/dev/null || true
  local libs
  if ! libs="$(ldd "$bin" 2>&1)"; then
    # "not a dynamic executable": a static build needs nothing else.
    case "$libs" in *"not a dynamic executable"*|*"statically linked"*) libs="" ;;
      *) die "ldd $bin failed: $libs" ;; esac
  fi
  while read -r line; do
    local path=""
    case "$line" in
      *"=> not found"*) die "ldd: a library of $bin is missing: $line" ;;
      *"=> /"*) path="${line#*=> }"; path="${path%% (*}" ;;
      /*) path="${line%% (*}" ;;
    esac
    [ -n "$path" ] || continue
    mkdir -p "$ctx$(dirname "$path")"
    cp -L "$path" "$ctx$path"
  done <<< "$libs"
  cp "$here/Dockerfile" "$ctx/Dockerfile"
  printf "Dockerfile\n.dockerignore\n" > "$ctx/.dockerignore"
  local log
  log="$(docker build --label "$LABEL" --label "$OWNER_LABEL" --label "plexus.run=$run" -t "$tag" "$ctx" 2>&1)" \
    || die "docker build of $tag failed: $log"
  echo "$tag"
}

# A /24 no other network uses: try random 10.2xx.y.0/24 until one is free.
create_network() {
  local name="$1" run="$2" i a b
  for i in $(seq 1 20); do
    a=$((200 + RANDOM % 50)); b=$((RANDOM % 256))
    if docker network create --driver bridge --subnet "10.$a.$b.0/24" \
        --label "$LABEL" --label "$OWNER_LABEL" --label "plexus.run=$run" "$name" >/dev/null 2>&1; then
      echo "10.$a.$b"
      return 0
    fi
  done
  die "could not create network $name (no free 10.2xx.y.0/24 after 20 tries)"
}

# Members this node's API reports as up (0 while it does not answer).
members_up() {
  local out
  out="$("$(bin_path)" status --connect "$1" --json 2>/dev/null)" || { echo 0; return; }
  grep -c '"status": "up"' <<< "$out" || true
}

up() {
  local run="${PLEXUS_DOCKER_RUN:-$(head -c 4 /dev/urandom | od -An -tx1 | tr -d ' \n')}"
  local net="plexus-$run" cookie="${PLEXUS_COOKIE:-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')}"
  # The API listens beyond loopback, so it has a token (a node refuses to
  # serve it open there); the CLI calls below and the caller use it too.
  export PLEXUS_API_TOKEN="${PLEXUS_API_TOKEN:-$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')}"
  local data="${PLEXUS_DOCKER_DATA:-}" owned=0
  if [ -z "$data" ]; then
    data="$(mktemp -d "${TMPDIR:-/tmp}/plexus-docker-$run.XXXXXX")"; owned=1
  fi
  mkdir -p "$data"
  # From here on a failure (or Ctrl-C) removes what was created.
  UP_RUN="$run"; UP_OK=0
  trap 'exit 130' INT TERM
  trap '[ "$UP_OK" = 1 ] || { echo "cluster.sh: up failed; removing run $UP_RUN" >&2; PLEXUS_DOCKER_QUIET=1 down "$UP_RUN"; }' EXIT
  local image prefix
  image="$(build_image "$run")"
  prefix="$(create_network "$net" "$run")"
  # A second network no node is on: a partition test moves a node onto it,
  # so the host still reaches a node the others cannot.
  side="$(create_network "$net-side" "$run")"
  local plugins=("" "${PLEXUS_NODE1_PLUGINS-jira-orchestrator,exec-automator}"
    "${PLEXUS_NODE2_PLUGINS-frontend-powerhouse,lobbi-platform-manager}"
    "${PLEXUS_NODE3_PLUGINS-home-assistant-architect,ahling-command-center}")
  local seeds=() i
  for i in 1 2 3; do seeds+=(--seed "$prefix.1$i:7101"); done
  {
    echo "RUN=$run"
    echo "NETWORK=$net"
    echo "SUBNET=$prefix.0/24"
    echo "SIDE_NETWORK=$net-side"
    echo "SIDE_SUBNET=$side.0/24"
    echo "IMAGE=$image"
    echo "DATA=$data"
    echo "DATA_OWNED=$owned"
    echo "COOKIE=$cookie"
    echo "API_TOKEN=$PLEXUS_API_TOKEN"
  } > "$data/cluster.env"
  for i in 1 2 3; do
    local ip="$prefix.1$i" catalog=() skew_var="PLEXUS_NODE${i}_CLOCK_SKEW_MS" skew=()
    if [ -n "${!skew_var:-}" ]; then
      skew=(-e "PLEXUS_CLOCK_SKEW_MS=${!skew_var}")
    fi
    mkdir -p "$data/node$i"
    if [ -n "${PLEXUS_DOCKER_CATALOG:-}" ]; then
      catalog=(-v "$(cd "$PLEXUS_DOCKER_CATALOG" && pwd):/catalog:ro")
    fi
    docker run -d --name "plexus-$run-node$i" --hostname "node$i" \
      --label "$LABEL" --label "$OWNER_LABEL" --label "plexus.run=$run" \
      --network "$net" --ip "$ip" \
      -v "$data/node$i:/data" "${catalog[@]}" \
      -e PLEXUS_COOKIE="$cookie" -e PLEXUS_API_TOKEN -e PLEXUS_LOG="${PLEXUS_LOG:-info}" "${skew[@]}" \
      "$image" node --name "node$i" --listen 0.0.0.0:7101 --api 0.0.0.0:7201 \
      --advertise "$ip" --data-dir /data --plugins "${plugins[$i]}" \
      ${PLEXUS_DOCKER_CATALOG:+--catalog /catalog} "${seeds[@]}" >/dev/null
    {
      echo "NODE${i}_CONTAINER=plexus-$run-node$i"
      echo "NODE${i}_IP=$ip"
      echo "NODE${i}_API=$ip:7201"
      echo "NODE${i}_CLOCK_SKEW_MS=${!skew_var:-0}"
      echo "NODE${i}_CLUSTER=$ip:7101"
    } >> "$data/cluster.env"
  done
  local deadline=$((SECONDS + ${PLEXUS_DOCKER_TIMEOUT:-90}))
  for i in 1 2 3; do
    while [ "$(members_up "$prefix.1$i:7201")" != 3 ]; do
      if [ "$(docker inspect -f '{{.State.Running}}' "plexus-$run-node$i")" != true ]; then
        docker logs --tail 30 "plexus-$run-node$i" >&2 || true
        echo "cluster.sh: node$i exited (log above)" >&2
        false
      fi
      if [ $SECONDS -ge $deadline ]; then
        docker logs --tail 30 "plexus-$run-node$i" >&2 || true
        echo "cluster.sh: node$i does not see three members up after ${PLEXUS_DOCKER_TIMEOUT:-90}s" >&2
        false
      fi
      sleep 0.2
    done
  done
  UP_OK=1
  cat "$data/cluster.env"
}

down() {
  local run="$1" data="" owned=0
  [[ "$run" =~ ^[A-Za-z0-9_.-]+$ ]] || die "bad run id ${run:-<empty>}"
  local ids
  ids="$(docker ps -aq --filter "label=plexus.run=$run")"
  # shellcheck disable=SC2086
  [ -z "$ids" ] || docker rm -f -v $ids >/dev/null
  ids="$(docker network ls -q --filter "label=plexus.run=$run")"
  # shellcheck disable=SC2086
  [ -z "$ids" ] || docker network rm $ids >/dev/null
  ids="$(docker images -q --filter "label=plexus.run=$run" | sort -u)"
  # shellcheck disable=SC2086
  [ -z "$ids" ] || docker rmi -f $ids >/dev/null
  # The data dir is removed only when this script made it.
  local f
  for f in "${TMPDIR:-/tmp}"/plexus-docker-"$run".*/cluster.env; do
    [ -f "$f" ] || continue
    data="$(sed -n 's/^DATA=//p' "$f")"; owned="$(sed -n 's/^DATA_OWNED=//p' "$f")"
    [ "$owned" = 1 ] && [ -n "$data" ] && rm -rf "$data"
  done
  [ -n "${PLEXUS_DOCKER_QUIET:-}" ] || echo "removed run $run"
}

prune() {
  local ids
  ids="$(docker ps -aq --filter "label=$LABEL")"
  # shellcheck disable=SC2086
  [ -z "$ids" ] || docker rm -f -v $ids >/dev/null
  ids="$(docker network ls -q --filter "label=$LABEL")"
  # shellcheck disable=SC2086
  [ -z "$ids" ] || docker network rm $ids >/dev/null
  ids="$(docker images -q --filter "label=$LABEL" | sort -u)"
  # shellcheck disable=SC2086
  [ -z "$ids" ] || docker rmi -f $ids >/dev/null
  echo "removed every container, network and image labelled $LABEL"
}

prune_orphans() {
  local line run owner runs="" ids
  # "RUN OWNER" of every labelled container, network and image.
  {
    docker ps -a --filter "label=$LABEL" --format '{{.Label "plexus.run"}} {{.Label "plexus.owner"}}'
    docker network ls --filter "label=$LABEL" --format '{{.Label "plexus.run"}} {{.Label "plexus.owner"}}'
    ids="$(docker images -q --filter "label=$LABEL" | sort -u)"
    # shellcheck disable=SC2086
    [ -z "$ids" ] || docker image inspect --format \
      '{{index .Config.Labels "plexus.run"}} {{index .Config.Labels "plexus.owner"}}' $ids
  } > "${TMPDIR:-/tmp}/plexus-docker-orphans.$$"
  while read -r run owner; do
    [ -n "$run" ] && [[ "$owner" =~ ^[0-9]+$ ]] || continue
    kill -0 "$owner" 2>/dev/null || runs="$runs $run"
  done < "${TMPDIR:-/tmp}/plexus-docker-orphans.$$"
  rm -f "${TMPDIR:-/tmp}/plexus-docker-orphans.$$"
  for run in $(tr ' ' '\n' <<< "$runs" | sort -u); do
    PLEXUS_DOCKER_QUIET=1 down "$run"
    echo "removed orphaned run $run"
  done
}

case "${1:-}" in
  up) up ;;
  down) [ $# -eq 2 ] || die "usage: cluster.sh down RUN"; down "$2" ;;
  prune) prune ;;
  prune-orphans) prune_orphans ;;
  image) build_image "${PLEXUS_DOCKER_RUN:-manual}" ;;
  *) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
