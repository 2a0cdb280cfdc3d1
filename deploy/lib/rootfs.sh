# shellcheck shell=bash
# stage_rootfs BIN DIR: lay out in DIR what a `FROM scratch` image needs to
# run BIN: the binary (a stripped copy, as DIR/plexus), every shared library
# `ldd` lists and the dynamic loader, at the paths the binary looks for them
# (the vDSO has no file and is skipped). A static binary needs nothing else.
# Nothing is downloaded. Used by deploy/image.sh and tests/docker/cluster.sh.
stage_rootfs() {
  local bin="$1" dir="$2" libs line path
  [ -x "$bin" ] || { echo "stage_rootfs: $bin is not an executable: build it first (cargo build -p plexus-cli) or set PLEXUS_BIN" >&2; return 1; }
  mkdir -p "$dir"
  cp "$bin" "$dir/plexus"
  strip "$dir/plexus" 2>/dev/null || true
  if ! libs="$(ldd "$bin" 2>&1)"; then
    # "not a dynamic executable": a static build needs nothing else.
    case "$libs" in *"not a dynamic executable"*|*"statically linked"*) libs="" ;;
      *) echo "stage_rootfs: ldd $bin failed: $libs" >&2; return 1 ;; esac
  fi
  while read -r line; do
    path=""
    case "$line" in
      *"=> not found"*) echo "stage_rootfs: a library of $bin is missing: $line" >&2; return 1 ;;
      *"=> /"*) path="${line#*=> }"; path="${path%% (*}" ;;
      /*) path="${line%% (*}" ;;
    esac
    [ -n "$path" ] || continue
    mkdir -p "$dir$(dirname "$path")"
    cp -L "$path" "$dir$path"
  done <<< "$libs"
}
