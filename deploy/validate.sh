#!/usr/bin/env bash
# Offline checks of the deployment files (no cluster, no network beyond the
# package installs, which are no-ops once done):
#   - deploy/kubernetes/*.yaml against the Kubernetes schemas
#     (PyPI kubernetes-validate, in target/kubernetes-validate-venv);
#   - deploy/prometheus/: promtool check config, check rules, test rules
#     (Debian package prometheus);
#   - deploy/compose.yaml parses (docker-compose/docker compose config),
#     when a compose command is installed;
#   - deploy/grafana/plexus.json is JSON.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
KUBE_VERSION="${PLEXUS_KUBE_VERSION:-1.31.0}"

venv="$root/target/kubernetes-validate-venv"
if ! [ -x "$venv/bin/kubernetes-validate" ]; then
  py=python3
  if [ -x /usr/bin/python3 ] && /usr/bin/python3 -c "import venv, ensurepip" 2>/dev/null; then py=/usr/bin/python3; fi
  rm -rf "$venv"
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "kubernetes-validate==1.37.0"
fi
manifests=()
for f in deploy/kubernetes/*.yaml; do
  # kustomization.yaml is kustomize's input, not a Kubernetes resource.
  [ "$(basename "$f")" = kustomization.yaml ] || manifests+=("$f")
done
"$venv/bin/kubernetes-validate" --strict -k "$KUBE_VERSION" "${manifests[@]}"

if ! command -v promtool >/dev/null 2>&1; then
  echo "installing promtool (Debian package prometheus)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus) >/dev/null
fi
(
  cd deploy/prometheus
  promtool check rules plexus-rules.yml
  # --syntax-only: the credentials files exist only where Prometheus runs.
  promtool check config --syntax-only prometheus.yml
  promtool test rules plexus-rules.test.yml
)

if docker compose version >/dev/null 2>&1; then
  docker compose -f deploy/compose.yaml config -q
  docker compose -f deploy/compose.yaml --profile llm config -q
elif command -v docker-compose >/dev/null 2>&1; then
  docker-compose -f deploy/compose.yaml config -q
  docker-compose -f deploy/compose.yaml --profile llm config -q
fi
python3 -c 'import json,sys; json.load(open(sys.argv[1]))' deploy/grafana/plexus.json
echo "deploy files valid"
