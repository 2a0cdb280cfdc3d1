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
#
# Run as root, it also installs them where a sandboxed server can reach
# them: the sandbox runs it as uid nobody, which cannot enter a checkout in
# a 0700 directory (`mktemp -d`) or under /root. That copy is at
# ${PLEXUS_MCP_SANDBOX_VENV:-/opt/plexus/venv-mcp}, readable by everyone,
# shared by every checkout (tests/tests/mcp.rs runs its sandboxed server
# from it).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${PLEXUS_MCP_VENV:-.venv-mcp}"
SANDBOX_VENV="${PLEXUS_MCP_SANDBOX_VENV:-/opt/plexus/venv-mcp}"
# Pinned so a new server release cannot change the tests' tool lists.
PACKAGES=("mcp-server-time==2026.10.19" "mcp-server-git==2026.10.19")

installed() {
  [ -x "$1/bin/mcp-server-time" ] && [ -x "$1/bin/mcp-server-git" ]
}

need_sandbox_venv() {
  [ "$(id -u)" = 0 ] && ! installed "$SANDBOX_VENV"
}

if installed "$VENV" && ! need_sandbox_venv; then
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
if ! installed "$VENV"; then
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PACKAGES[@]}"
  echo "MCP servers installed in $VENV"
fi
if need_sandbox_venv; then
  # Every directory on the way searchable and every file readable by
  # nobody (and the interpreter a system one, see above).
  umask 022
  mkdir -p "$(dirname "$SANDBOX_VENV")"
  "$PYTHON" -m venv "$SANDBOX_VENV"
  "$SANDBOX_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PACKAGES[@]}"
  chmod -R a+rX "$SANDBOX_VENV"
  echo "MCP servers for sandboxed use installed in $SANDBOX_VENV"
fi
