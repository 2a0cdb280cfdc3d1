#!/usr/bin/env bash
# Smoke test of the deployment files: builds the release image here (nothing
# pulled), starts deploy/compose.yaml's three nodes, and checks that
#   1. every node sees 3 members up and reports ready (its health check too);
#   2. exec works across nodes (through node1's API, a plugin node3 hosts),
#      and the image's own CLI works inside a container (no shell);
#   3. when node3's container is stopped it drains: /v1/ready answers 503,
#      new work is refused, the two requests it had accepted (one through
#      its API, one through node1's) are answered by node3, the container
#      exits 0, and the peers show node3 as no longer up.
# Then it removes everything it created.
#
# Uses `docker compose` (v2) when present, else `docker-compose` (1.29; installed
# with apt when neither is there). PLEXUS_COMPOSE overrides the command.
# PLEXUS_BIN: the binary to package (default target/debug/plexus).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bin="${PLEXUS_BIN:-$root/target/debug/plexus}"
[ -x "$bin" ] || { echo "smoke: $bin missing: cargo build -p plexus-cli first" >&2; exit 2; }

say() { echo "smoke: $*" >&2; }
fail() { say "FAILED: $*"; exit 1; }

compose_cmd=()
if [ -n "${PLEXUS_COMPOSE:-}" ]; then
  read -r -a compose_cmd <<< "$PLEXUS_COMPOSE"
elif docker compose version >/dev/null 2>&1; then
  compose_cmd=(docker compose)
else
  if ! command -v docker-compose >/dev/null 2>&1; then
    say "installing docker-compose (Debian package)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose) >/dev/null
  fi
  compose_cmd=(docker-compose)
fi
say "using: ${compose_cmd[*]} ($("${compose_cmd[@]}" version --short 2>/dev/null || echo '?'))"

run="smoke$$$(head -c 2 /dev/urandom | od -An -tx1 | tr -d ' \n')"
project="plexus-$run"
image="plexus-smoke:$run"
work="$(mktemp -d "${TMPDIR:-/tmp}/plexus-smoke.XXXXXX")"
compose() {
  "${compose_cmd[@]}" -p "$project" -f "$root/deploy/compose.yaml" "$@"
}
cleanup() {
  local rc=$?
  if [ $rc -ne 0 ]; then
    for n in node1 node2 node3; do
      id="$(compose ps -q "$n" 2>/dev/null || true)"
      [ -n "$id" ] && { echo "--- logs of $n (last 40 lines)" >&2; docker logs --tail 40 "$id" >&2 2>&1 || true; }
    done
  fi
  compose down -v --remove-orphans >/dev/null 2>&1 || true
  docker rmi -f "$image" >/dev/null 2>&1 || true
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "building $image from $bin"
PLEXUS_BIN="$bin" PLEXUS_IMAGE_LABELS="--label plexus.test=smoke" "$root/deploy/image.sh" "$image" >/dev/null

# Secrets (readable by the image's uid 65532) and a catalog with a plugin
# whose calls can be made slow ($sim delay), hosted on node3.
mkdir -p "$work/secrets" "$work/catalog"
head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$work/secrets/cookie"; echo >> "$work/secrets/cookie"
token="$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')"
echo "$token" > "$work/secrets/api-token"
chmod 755 "$work" "$work/secrets" "$work/catalog"; chmod 644 "$work/secrets/"*
cat > "$work/catalog/drain-probe.toml" <<'TOML'
[plugin]
name = "drain-probe"
[handler]
kind = "sim"
latencyMs = 5
allowFaultInjection = true
[errorHandling.retryPolicy]
maxRetries = 0
[[commands]]
name = "work"
TOML

export PLEXUS_IMAGE="$image" PLEXUS_SECRETS="$work/secrets" PLEXUS_CATALOG="$work/catalog"
export PLEXUS_NODE3_PLUGINS="home-assistant-architect,ahling-command-center,drain-probe"
# Publish on free host ports (several runs may share a host).
export PLEXUS_NODE1_API="127.0.0.1:" PLEXUS_NODE2_API="127.0.0.1:" PLEXUS_NODE3_API="127.0.0.1:"
compose up -d >/dev/null 2>&1 || { compose up -d; fail "compose up"; }

declare -A CID
for n in node1 node2 node3; do CID[$n]="$(compose ps -q "$n")"; done
cid() { echo "${CID[$1]}"; }
api() { # the node's API as the host reaches it (its published port)
  local p; p="$(docker port "$(cid "$1")" 7201/tcp | head -n 1)"; echo "${p/0.0.0.0/127.0.0.1}"
}
px() { "$bin" --api-token "$token" "$@"; }
ready_code() { curl -s -m 5 -o /dev/null -w '%{http_code}' "http://$1/v1/ready" || true; }
# A function, so that wait_until asks again on every try (a "$(...)" in its
# arguments would be read once, before the first try).
ready_is() { [ "$(ready_code "$1")" = "$2" ]; }
wait_until() { # SECONDS WHAT COMMAND...
  local limit=$1 what=$2; shift 2
  local deadline=$((SECONDS + limit))
  until "$@"; do
    [ $SECONDS -lt $deadline ] || fail "$what (waited ${limit}s)"
    sleep 0.5
  done
}
# `plexus status --json` read with python3 (no jq on a fresh machine).
status_of() { # API NODE -> that member's status as API sees it ("" if unknown)
  px status --connect "$1" --json 2>/dev/null | python3 -c '
import json, sys
d = json.load(sys.stdin)
print(next((m["status"] for m in d["members"] if m["name"] == sys.argv[1]), ""))' "$2" || true
}
members_up() { for m in node1 node2 node3; do [ "$(status_of "$1" "$m")" = up ] || return 1; done; }
health_ok() { [ "$(docker inspect -f '{{.State.Health.Status}}' "$(cid "$1")")" = healthy ]; }

declare -A A
for n in node1 node2 node3; do A[$n]="$(api "$n")"; done
say "APIs: node1 ${A[node1]}, node2 ${A[node2]}, node3 ${A[node3]}"

# 1. Three members up, ready, and healthy by the image's HEALTHCHECK.
for n in node1 node2 node3; do
  wait_until 90 "$n sees 3 members up" members_up "${A[$n]}"
  wait_until 30 "$n ready" ready_is "${A[$n]}" 200
done
for n in node1 node2 node3; do
  wait_until 60 "$n healthy (compose health check)" health_ok "$n"
done
say "ok: 3 members up, every node ready and healthy"

# 2. Exec across nodes, and the in-image CLI (no shell in the image).
out="$(px exec --connect "${A[node1]}" --plugin home-assistant-architect --command ha-automation --json)" \
  || fail "exec through node1: $out"
served_by() { python3 -c 'import json,sys; print(json.load(sys.stdin)["node"])'; }
[ "$(served_by <<< "$out")" = node3 ] || fail "exec did not run on node3: $out"
docker exec "$(cid node2)" /plexus --api-token-file /run/secrets/plexus_api_token \
  exec --connect 127.0.0.1:7201 --plugin jira-orchestrator --command approve --json > "$work/in-image.json" \
  || fail "exec inside node2's container: $(cat "$work/in-image.json")"
[ "$(served_by < "$work/in-image.json")" = node1 ] || fail "in-image exec not served by node1"
say "ok: exec across nodes (node1 -> node3, node2 -> node1 inside the image)"

# 3. Drain: two slow requests accepted by node3, then `docker stop`.
# Long enough that the stop lands while both run, even on a loaded host.
slow='{"$sim":{"delay_ms":20000}}'
px exec --connect "${A[node3]}" --plugin drain-probe --command work --input "$slow" --timeout-ms 60000 --json > "$work/a.json" 2>&1 & pa=$!
px exec --connect "${A[node1]}" --plugin drain-probe --command work --input "$slow" --timeout-ms 60000 --json > "$work/b.json" 2>&1 & pb=$!
in_flight() {
  curl -s "http://${A[node3]}/v1/ready" | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["in_flight"] >= 3 else 1)' 2>/dev/null
}
wait_until 20 "both requests in flight on node3" in_flight
docker stop -t 60 "$(cid node3)" >/dev/null & ps=$!
wait_until 10 "node3 /v1/ready 503 while draining" ready_is "${A[node3]}" 503
curl -s "http://${A[node3]}/v1/ready" | grep -q draining || fail "node3 /v1/ready does not say draining"
if refused="$(px exec --connect "${A[node3]}" --plugin drain-probe --command work 2>&1)"; then
  fail "node3 took new work while draining: $refused"
fi
grep -q draining <<< "$refused" || fail "new work refused, but not as draining: $refused"
say "ok: node3 draining: /v1/ready 503, new work refused"
wait "$pa" || fail "request accepted by node3 not answered: $(cat "$work/a.json")"
wait "$pb" || fail "request accepted by node1 for node3 not answered: $(cat "$work/b.json")"
[ "$(served_by < "$work/a.json")" = node3 ] && [ "$(served_by < "$work/b.json")" = node3 ] \
  || fail "accepted requests not served by node3: $(cat "$work/a.json" "$work/b.json")"
wait "$ps"
code="$(docker inspect -f '{{.State.ExitCode}}' "$(cid node3)")"
[ "$code" = 0 ] || fail "node3 exited $code after the drain"
node3_gone() { s="$(status_of "${A[node1]}" node3)"; [ -n "$s" ] && [ "$s" != up ]; }
wait_until 20 "node1 to show node3 not up" node3_gone
say "ok: both accepted requests answered by node3, it exited 0 and left"
say "PASSED"
