#!/usr/bin/env bash
# Fuzz the node API with schemathesis (PyPI) against the OpenAPI document the
# node serves, on a real two-node local cluster: no request may end in a
# server error (5xx) other than those the spec documents (a plugin failing is
# a 502, an unavailable one a 503: the cluster answers for them on purpose).
#
#   tests/api/schemathesis.sh [MAX_EXAMPLES]     (default 30 per operation)
#
# Needs python3 with venv; installs schemathesis into target/schemathesis-venv
# once. The cluster and its data live in a temporary directory, removed at exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
MAX_EXAMPLES="${1:-30}"
BIN="${PLEXUS_BIN:-target/debug/plexus}"
VENV=target/schemathesis-venv

if [ ! -x "$BIN" ]; then
  echo "error: $BIN does not exist: cargo build first" >&2
  exit 2
fi
if [ ! -x "$VENV/bin/schemathesis" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check 'schemathesis>=4,<5'
fi

TMP=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

# start NAME PLUGINS [SEED]: run a node, wait for its ready line, set
# CLUSTER and API to its addresses. Called in this shell, never in a
# subshell (`< <(start ...)`), or PIDS+= would change the subshell's copy
# and the cleanup would kill nothing. The nodes' cookie carries this
# script's pid, so .ci/run can check that none outlives it.
start() {
  local name=$1 plugins=$2 seed=${3:-}
  local args=(node --name "$name" --listen 127.0.0.1:0 --api 127.0.0.1:0
    --plugins "$plugins" --data-dir "$TMP/$name" --cookie "schemathesis-$$"
    "${EXTRA[@]}")
  [ -n "$seed" ] && args+=(--seed "$seed")
  mkfifo "$TMP/$name.ready"
  PLEXUS_LOG=warn "$BIN" "${args[@]}" >"$TMP/$name.ready" 2>"$TMP/$name.log" &
  PIDS+=($!)
  local line
  read -r -t 60 line <"$TMP/$name.ready" || { echo "error: $name did not start" >&2; cat "$TMP/$name.log" >&2; exit 1; }
  read -r CLUSTER API < <(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print(r["cluster_addr"], r["api_addr"])' "$line")
}

EXTRA=()
start node1 jira-orchestrator,frontend-powerhouse
C1=$CLUSTER A1=$API
start node2 frontend-powerhouse,home-assistant-architect "$C1"
A2=$API
echo "cluster: node1 API $A1, node2 API $A2"
# Wait until node1 sees both members up.
python3 - "$A1" <<'PY'
import json, sys, time, urllib.request
deadline = time.time() + 30
while True:
    try:
        s = json.load(urllib.request.urlopen(f"http://{sys.argv[1]}/v1/status", timeout=5))
        if sum(m["status"] == "up" for m in s["members"]) == 2:
            break
    except OSError:
        pass
    if time.time() > deadline:
        sys.exit("error: the two nodes did not see each other within 30 s")
    time.sleep(0.2)
PY

# not_a_server_error: no 5xx that the spec does not list for the operation.
"$VENV/bin/schemathesis" run "http://$A1/v1/openapi.json" \
  --url "http://$A1" \
  --checks not_a_server_error \
  --max-examples "$MAX_EXAMPLES" \
  --request-timeout 20 \
  --no-color \
  --suppress-health-check all \
  --exclude-path /metrics

# The same API behind a token (issue 22): a third, separate node with an
# admin token. With the token the fuzzing finds no server error either;
# without it, or with a wrong one, every endpoint but the probes and the
# dashboard page answers 401.
TOKEN="schemathesis-$$-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
EXTRA=(--api-token "$TOKEN")
start node3 exec-automator
A3=$API
"$VENV/bin/schemathesis" run "http://$A3/v1/openapi.json" \
  --url "http://$A3" \
  --header "Authorization: Bearer $TOKEN" \
  --checks not_a_server_error \
  --max-examples "$MAX_EXAMPLES" \
  --request-timeout 20 \
  --no-color \
  --suppress-health-check all \
  --exclude-path /metrics
python3 - "$A3" "$TOKEN" <<'PY'
import json, sys, urllib.error, urllib.request
api, token = sys.argv[1], sys.argv[2]
def status(method, path, auth):
    req = urllib.request.Request(f"http://{api}{path}", method=method,
        data=b"{}" if method == "POST" else None,
        headers={"Content-Type": "application/json", **({"Authorization": auth} if auth else {})})
    try:
        return urllib.request.urlopen(req, timeout=10).status
    except urllib.error.HTTPError as e:
        return e.code
spec = json.load(urllib.request.urlopen(urllib.request.Request(
    f"http://{api}/v1/openapi.json", headers={"Authorization": f"Bearer {token}"}), timeout=10))
open_paths = {"/v1/health", "/v1/ready", "/"}
bad = []
checked = 0
for path, ops in spec["paths"].items():
    concrete = path.replace("{id}", "x").replace("{name}", "x")
    for method in ops:
        for auth in (None, "Bearer wrong-token-0123456789", "Basic abc"):
            got = status(method.upper(), concrete, auth)
            checked += 1
            want_open = path in open_paths
            if (got == 401) == want_open:
                bad.append(f"{method.upper()} {path} with {auth!r}: {got}")
if bad:
    sys.exit("error: without the right token:\n  " + "\n  ".join(bad))
print(f"ok: {checked} requests without the right token, every protected one 401")
PY
