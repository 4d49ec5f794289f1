#!/usr/bin/env bash
# Install and build what the real (containerd + kubelet) test node needs; tests/support/realnode.py runs it.
#
#   hack/realnode.sh install   apt-get install the Debian packages when missing (a no-op when present)
#   hack/realnode.sh build     build kubelet + kube-proxy (hack/testbin.sh node), coredns (hack/gotools.sh)
#                              the pause binary and the test image's apiprobe; print KEY=path lines
#   hack/realnode.sh prepare   install + build where this host can run containers (exit 1, saying why, when
#                              that fails: make test then stops, since the real-node and e2e tests must
#                              run on such a host); elsewhere print why and exit 0 (those tests then skip,
#                              saying why)
#   hack/realnode.sh check     exit 0 when this host can run the real node (packages there, binaries built)
#   hack/realnode.sh can-run   print nothing and exit 0 when this host can run containers, else print why
#                              and exit 1 (installs nothing, builds nothing)
#   hack/realnode.sh --print   print KEY=path lines (builds nothing)
#
# Builds land in $KUBETUNE_TESTBIN_DIR (default ~/.cache/kubetune/testbin) like the control plane's, with
# their build times appended to build-times.txt.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TESTBIN_DIR=${KUBETUNE_TESTBIN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kubetune/testbin}
# Debian bookworm: containerd 1.6, runc 1.1, CNI plugins 1.1 (bridge, host-local, loopback in /usr/lib/cni).
PACKAGES=(containerd runc containernetworking-plugins iptables conntrack busybox-static)
CNI_BIN_DIR=/usr/lib/cni
PAUSE_SRC=$HERE/realnode/pause.c
PAUSE_DIR=$TESTBIN_DIR/pause-$(sha256sum "$PAUSE_SRC" | cut -c1-12)
APIPROBE_SRC=$HERE/realnode/apiprobe
APIPROBE_DIR=$TESTBIN_DIR/apiprobe-$(cat "$APIPROBE_SRC/go.mod" "$APIPROBE_SRC/main.go" | sha256sum | cut -c1-12)
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
# shellcheck source=hack/gocache.sh
source "$HERE/gocache.sh"

log() { printf '[realnode] %s\n' "$*" >&2; }

# Why this host cannot run containers (empty when it can). Checks the kernel, not the packages.
host_problem() {
  [[ $(id -u) == 0 ]] || { echo "not root (containerd, the kubelet and CNI need root)"; return; }
  [[ $(uname -s) == Linux ]] || { echo "not Linux"; return; }
  grep -qw overlay /proc/filesystems || { echo "the kernel has no overlay filesystem (containerd's snapshotter)"; return; }
  [[ -d /proc/sys/net/bridge || -d /sys/class/net ]] || { echo "no network bridge support"; return; }
  [[ -e /sys/fs/cgroup/memory/memory.limit_in_bytes || -e /sys/fs/cgroup/cgroup.controllers ]] \
    || { echo "no memory cgroup controller"; return; }
  command -v unshare >/dev/null && ! unshare --net --mount --pid --uts --ipc --fork true 2>/dev/null \
    && { echo "cannot create namespaces (unshare --net --mount --pid --uts --ipc failed)"; return; }
  return 0
}

packages_missing() {
  local p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
  done
}

install() {
  local why missing
  why=$(host_problem)
  [[ -z $why ]] || { log "cannot run a real node here: $why"; return 1; }
  mapfile -t missing < <(packages_missing)
  [[ ${#missing[@]} -eq 0 ]] && return 0
  command -v apt-get >/dev/null || { log "missing packages ${missing[*]} and no apt-get to install them"; return 1; }
  log "installing ${missing[*]} (apt-get)"
  # A package's postinst may try to start its service; there is no init system to do so here, and the
  # node runs its own containerd anyway. The lock timeout: another apt-get (hack/images.sh's) may be running.
  local apt=(apt-get -o DPkg::Lock::Timeout=600)
  if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y --no-install-recommends "${missing[@]}" >&2; then
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" update >&2 || true
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y --no-install-recommends "${missing[@]}" >&2 \
      || { log "apt-get install ${missing[*]} failed"; return 1; }
  fi
}

print_paths() {
  bash "$HERE/testbin.sh" node --print
  bash "$HERE/gotools.sh" --print | grep '^COREDNS='
  echo "PAUSE=$PAUSE_DIR/pause"
  echo "APIPROBE=$APIPROBE_DIR/apiprobe"
  echo "CNI_BIN_DIR=$CNI_BIN_DIR"
}

built() {
  bash "$HERE/testbin.sh" node --check && bash "$HERE/gotools.sh" --check coredns && [[ -x $PAUSE_DIR/pause ]] \
    && [[ -x $APIPROBE_DIR/apiprobe ]]
}

build_pause() {
  [[ -x $PAUSE_DIR/pause ]] && return 0
  command -v gcc >/dev/null || { log "gcc is needed to build the pause binary"; return 1; }
  local tmp=$PAUSE_DIR.tmp.$$ start end
  start=$(date +%s)
  rm -rf "$tmp"
  mkdir -p "$tmp"
  gcc -Os -static -Wall -Werror -o "$tmp/pause" "$PAUSE_SRC"
  strip "$tmp/pause" 2>/dev/null || true
  rm -rf "$PAUSE_DIR"
  mv "$tmp" "$PAUSE_DIR"
  end=$(date +%s)
  echo "$(date -u +%FT%TZ) $(basename "$PAUSE_DIR") $((end - start))s" >>"$TESTBIN_DIR/build-times.txt"
}

build_apiprobe() { # the test image's in-cluster API client (standard library only: no download)
  [[ -x $APIPROBE_DIR/apiprobe ]] && return 0
  local tmp=$APIPROBE_DIR.tmp.$$ start end
  start=$(date +%s)
  rm -rf "$tmp"
  mkdir -p "$tmp"
  (cd "$APIPROBE_SRC" && CGO_ENABLED=0 GOTOOLCHAIN=local "$GO" build -trimpath -ldflags "-s -w" -o "$tmp/apiprobe" .)
  rm -rf "$APIPROBE_DIR"
  mv "$tmp" "$APIPROBE_DIR"
  end=$(date +%s)
  echo "$(date -u +%FT%TZ) $(basename "$APIPROBE_DIR") $((end - start))s" >>"$TESTBIN_DIR/build-times.txt"
}

build() {
  mkdir -p "$TESTBIN_DIR"
  bash "$HERE/testbin.sh" node >/dev/null
  bash "$HERE/gotools.sh" coredns >/dev/null
  build_pause
  build_apiprobe
  print_paths
}

case "${1:-}" in
  install) install ;;
  build) build ;;
  prepare)
    why=$(host_problem)
    if [[ -n $why ]]; then
      log "the real node will not run here ($why): its tests will skip, saying so"
      exit 0
    fi
    if ! install; then
      log "this host can run containers, but the real node's packages could not be installed (above):" \
        "the real-node and e2e tests cannot run; fix that, or run elsewhere"
      exit 1
    fi
    build >/dev/null || { log "the real node's binaries could not be built (above)"; exit 1; }
    ;;
  check)
    [[ -z $(host_problem) && -z $(packages_missing) ]] && built ;;
  can-run)
    why=$(host_problem)
    [[ -z $why ]] || { echo "$why"; exit 1; }
    ;;
  --print) print_paths ;;
  *) echo "usage: $0 install|build|prepare|check|can-run|--print" >&2; exit 2 ;;
esac
