#!/usr/bin/env bash
# Install the real MCP servers the MCP examples and tests use
# (mcp-server-time, mcp-server-git from PyPI) into a virtual environment at
# .venv-mcp/ in the checkout. A no-op when they are already installed.
#
#   scripts/setup-mcp.sh            # install if missing
#   PLEXUS_MCP_VENV=/some/dir scripts/setup-mcp.sh
#
# The servers are then at .venv-mcp/bin/mcp-server-time and
# .venv-mcp/bin/mcp-server-git.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${PLEXUS_MCP_VENV:-.venv-mcp}"
# Pinned so a new server release cannot change the tests' tool lists.
PACKAGES=("mcp-server-time==2026.10.19" "mcp-server-git==2026.10.19")

if [ -x "$VENV/bin/mcp-server-time" ] && [ -x "$VENV/bin/mcp-server-git" ]; then
  echo "MCP servers already installed in $VENV"
  exit 0
fi

# The system interpreter when there is one: a sandboxed server (uid nobody,
# landlock) can run it, where one under a home directory (pyenv) is out of reach.
if [ -z "${PYTHON:-}" ] && [ -x /usr/bin/python3 ] && /usr/bin/python3 -c "import venv, ensurepip" 2>/dev/null; then
  PYTHON=/usr/bin/python3
fi
PYTHON="${PYTHON:-python3}"
if ! command -v "$PYTHON" >/dev/null; then
  echo "error: $PYTHON not found; the MCP servers need Python 3.10 or newer" >&2
  exit 2
fi
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PACKAGES[@]}"
echo "MCP servers installed in $VENV"
