#!/usr/bin/env bash
# Build kubetune's images from this repository and load them into a cluster's nodes.
#
#   hack/images.sh [build]           the base (once), then kubetune-operator, kubetune-trainer,
#                                    kubetune-tgi-test and kubetune-vllm-cpu, tagged :dev ($KUBETUNE_IMAGE_TAG)
#   hack/images.sh load [SOCKET]     import them into a containerd (default: the local test cluster's real
#                                    node, <cluster dir>/real-0/containerd.sock), skipping each image that
#                                    is there already with the same ID; the version an import replaces is
#                                    removed first, and the imported layers' archives once unpacked (below)
#   hack/images.sh kind-load [NAME]  `kind load docker-image` them into kind cluster NAME (kubetune-test)
#   hack/images.sh ids               print "IMAGE ID SIZE" of the built images (from the last build)
#   hack/images.sh dockerd-up        start dockerd if no Docker engine answers (see below), leave it running
#   hack/images.sh dockerd-down      stop the dockerd this script started (by its PID)
#   hack/images.sh tools             install what a build needs (docker.io, debootstrap) when no engine answers
#                                    (hack/images-background.sh: apt-get before, not beside, the real node's)
#
# No image registry is needed. The base is Debian bookworm with python3 made with debootstrap from Debian's
# package mirror and `docker import`ed as kubetune-base:bookworm ($KUBETUNE_BASE_IMAGE names another base,
# which must have python3 >= 3.11 and its venv module). The Dockerfiles keep their own default bases (CUDA
# for the trainer, python slim for the operator) for users; only the base is swapped here. Builds use
# BuildKit with the host's network (pip inside the build reaches PyPI) and keep pip's downloads in a
# BuildKit cache mount; the dependency layers come before the sources, so after a code change a rebuild
# takes seconds, and with no change the whole command does.
#
# Docker: any engine that answers `docker info` is used as it is. Otherwise, as root on a machine with
# Debian's docker.io package (installed here when missing, with debootstrap), this script starts dockerd
# itself with --iptables=false --bridge=none (docker's iptables rules would set FORWARD to DROP and cut the
# real node's pod network; builds use host networking instead), its data in /var/lib/docker (the cache of
# every layer, kept between runs), and stops it by PID when the command ends (dockerd-up keeps it).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${KUBETUNE_IMAGES_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubetune/images}
TAG=${KUBETUNE_IMAGE_TAG:-dev}
CLUSTER_DIR=${KUBETUNE_CLUSTER_DIR:-$ROOT/.cluster}
DOCKER_DATA_ROOT=${KUBETUNE_DOCKER_DATA_ROOT:-/var/lib/docker}
DOCKERD_PIDFILE=${KUBETUNE_DOCKERD_PIDFILE:-/var/run/kubetune-dockerd.pid}

BASE_SUITE=bookworm
BASE_MIRROR=${KUBETUNE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE_PACKAGES=python3,python3-venv,ca-certificates,tini
DEFAULT_BASE=kubetune-base:$BASE_SUITE
BASE_IMAGE=${KUBETUNE_BASE_IMAGE:-$DEFAULT_BASE}
# The CA certificates this host trusts (e.g. a TLS-inspecting proxy's) go into the base, and pip in the
# builds uses them (PIP_CERT); KUBETUNE_BASE_CA_BUNDLE= (empty) leaves Debian's alone.
CA_BUNDLE=${KUBETUNE_BASE_CA_BUNDLE-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}

OPERATOR=kubetune-operator:$TAG
TRAINER=kubetune-trainer:$TAG
TGI=kubetune-tgi-test:$TAG
VLLM=kubetune-vllm-cpu:$TAG
IMAGES=("$OPERATOR" "$TRAINER" "$TGI" "$VLLM")
# Images loaded in one archive (`docker save`) because they share layers, which then travel once: the TGI test
# image is the trainer's plus a layer. The vLLM image shares only the base (170 MB) and goes alone.
LOAD_GROUPS=("$OPERATOR $TRAINER $TGI" "$VLLM")
IDS_FILE=$CACHE/built-$TAG.txt

export DOCKER_BUILDKIT=1

log() { printf '[images] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

mkdir -p "$CACHE/logs"

# ------------------------------------------------------------------------------------------- tools
# A docker CLI that can build with BuildKit: one with buildx, else Debian's docker.io client (20.10), whose
# BuildKit is built in. (A newer CLI without the buildx plugin refuses DOCKER_BUILDKIT=1.)
pick_docker() {
  if [[ -n ${DOCKER:-} ]]; then return; fi
  if command -v docker >/dev/null && docker buildx version >/dev/null 2>&1; then
    DOCKER=docker
  elif [[ -x /usr/bin/docker ]]; then
    DOCKER=/usr/bin/docker
  else
    DOCKER=docker
  fi
}

# Debian's docker.io (dockerd, its containerd and runc) and debootstrap, as root with apt. Services are not
# started by the install (a policy-rc.d says no while it runs): this script starts dockerd its own way.
install_tools() {
  local missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  [[ $BASE_IMAGE != "$DEFAULT_BASE" ]] || command -v debootstrap >/dev/null || missing+=(debootstrap)
  ((${#missing[@]})) || return 0
  if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
    die "missing ${missing[*]}: install them (Debian/Ubuntu: apt-get install ${missing[*]}), or point DOCKER at a working engine's CLI"
  fi
  log "installing ${missing[*]} with apt-get"
  local policy=/usr/sbin/policy-rc.d added=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && added=1
  fi
  local apt=(apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends)
  DEBIAN_FRONTEND=noninteractive "${apt[@]}" "${missing[@]}" >"$CACHE/logs/apt.log" 2>&1 \
    || { apt-get -o DPkg::Lock::Timeout=600 update >>"$CACHE/logs/apt.log" 2>&1 \
         && DEBIAN_FRONTEND=noninteractive "${apt[@]}" "${missing[@]}" >>"$CACHE/logs/apt.log" 2>&1; } \
    || { ((added)) && rm -f "$policy"; tail -20 "$CACHE/logs/apt.log" >&2; die "apt-get install ${missing[*]} failed"; }
  ((added)) && rm -f "$policy"
  return 0
}

docker_answers() { "$DOCKER" info >/dev/null 2>&1; }

dockerd_pid() {
  local pid
  pid=$(cat "$DOCKERD_PIDFILE" 2>/dev/null) || return 1
  [[ -n $pid && -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q '^dockerd ' && echo "$pid"
}

STARTED_DOCKERD=0
dockerd_up() {
  pick_docker
  docker_answers && return 0
  install_tools
  docker_answers && return 0
  [[ $(id -u) == 0 ]] || die "no Docker engine answers and starting dockerd needs root"
  log "starting dockerd (data in $DOCKER_DATA_ROOT, log $CACHE/logs/dockerd.log)"
  mkdir -p "$DOCKER_DATA_ROOT"
  setsid dockerd --data-root "$DOCKER_DATA_ROOT" --pidfile "$DOCKERD_PIDFILE" \
    --iptables=false --ip-forward=false --ip-masq=false --bridge=none \
    >"$CACHE/logs/dockerd.log" 2>&1 </dev/null 9>&- &
  local i
  for i in $(seq 1 120); do
    docker_answers && { STARTED_DOCKERD=1; return 0; }
    kill -0 $! 2>/dev/null || break
    sleep 0.5
  done
  tail -20 "$CACHE/logs/dockerd.log" >&2
  die "dockerd did not come up"
}

dockerd_down() {
  local pid i
  pid=$(dockerd_pid) || { log "no dockerd of ours runs"; return 0; }
  log "stopping dockerd (pid $pid)"
  kill -TERM "$pid"
  for i in $(seq 1 60); do
    [[ -e /proc/$pid ]] || { rm -f "$DOCKERD_PIDFILE"; return 0; }
    sleep 0.5
  done
  kill -KILL "$pid" 2>/dev/null || true
}

stop_if_started() { ((STARTED_DOCKERD)) && dockerd_down || true; }

# ------------------------------------------------------------------------------------------- base image
base_key() {
  { echo "$BASE_SUITE $BASE_MIRROR $BASE_PACKAGES"; [[ -z $CA_BUNDLE ]] || cat "$CA_BUNDLE"; } | sha256sum | cut -c1-16
}

build_base() {
  local key have rootfs started
  key=$(base_key)
  have=$("$DOCKER" image inspect -f '{{index .Config.Labels "io.kubetune.base-key"}}' "$DEFAULT_BASE" 2>/dev/null || true)
  [[ $have == "$key" ]] && return 0
  local tarball=$CACHE/base-$BASE_SUITE-$key.tar
  if [[ ! -s $tarball ]]; then
    command -v debootstrap >/dev/null || die "debootstrap is missing (apt-get install debootstrap)"
    started=$(now)
    rootfs=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    log "debootstrap $BASE_SUITE ($BASE_PACKAGES) from $BASE_MIRROR (log $CACHE/logs/debootstrap.log)"
    debootstrap --variant=minbase --include="$BASE_PACKAGES" "$BASE_SUITE" "$rootfs" "$BASE_MIRROR" \
      >"$CACHE/logs/debootstrap.log" 2>&1 || { tail -20 "$CACHE/logs/debootstrap.log" >&2; rm -rf "$rootfs"; die "debootstrap failed"; }
    cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $BASE_MIRROR $BASE_SUITE main
deb $BASE_MIRROR $BASE_SUITE-updates main
deb ${BASE_MIRROR%/debian}/debian-security $BASE_SUITE-security main
EOF
    if [[ -n $CA_BUNDLE ]]; then
      cp "$CA_BUNDLE" "$rootfs/usr/local/share/ca-certificates/kubetune-host.crt"
      chroot "$rootfs" update-ca-certificates >>"$CACHE/logs/debootstrap.log" 2>&1
    fi
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log
    tar -C "$rootfs" --numeric-owner -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$rootfs"
    log "base rootfs made in $(since "$started") s"
  fi
  "$DOCKER" import --change "LABEL io.kubetune.base-key=$key" --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' --change 'CMD ["/bin/bash"]' \
    "$tarball" "$DEFAULT_BASE" >/dev/null
  log "imported $DEFAULT_BASE"
}

# ------------------------------------------------------------------------------------------- build
build_one() {
  local image=$1 context=$2
  shift 2
  local started logfile=$CACHE/logs/build-${image%%:*}.log
  started=$(now)
  if ! "$DOCKER" build --progress plain --network host -t "$image" "$@" "$context" >"$logfile" 2>&1; then
    tail -40 "$logfile" >&2
    die "building $image failed (whole log: $logfile)"
  fi
  log "$image built in $(since "$started") s"
}

# The vLLM image on the CPU (hack/vllm/Dockerfile: the serving tests' vLLM venv, hack/vllm-venv.sh install-into);
# only the base is shared with the others (its torch and CUDA libraries are other versions than the trainer's).
# Its inputs are few and named here: the Dockerfile, the three files it copies and the base. The image is kept
# when they are those it was built from (recorded in $CACHE), whatever Docker's build cache still holds: a
# pruned build cache (`docker builder prune`, a disk guard) would otherwise rebuild 7 GB, 4-10 minutes.
VLLM_INPUTS=(hack/vllm/Dockerfile hack/vllm-venv.sh hack/vllm/constraints.txt hack/vllm/requirements.py)
build_vllm() {
  local key built record=$CACHE/inputs-${VLLM%%:*}-$TAG.txt
  key=$({ (cd "$ROOT" && sha256sum "${VLLM_INPUTS[@]}"); "$DOCKER" image inspect -f '{{.Id}}' "$BASE_IMAGE"; } | sha256sum | cut -c1-16)
  built=$("$DOCKER" image inspect -f '{{.Id}}' "$VLLM" 2>/dev/null || true)
  if [[ -n $built && $(cat "$record" 2>/dev/null) == "$key $built" ]]; then
    log "$VLLM is up to date (built from inputs $key)"
    return 0
  fi
  build_one "$VLLM" "$ROOT/hack" -f "$ROOT/hack/vllm/Dockerfile" --build-arg "BASE_IMAGE=$BASE_IMAGE"
  echo "$key $("$DOCKER" image inspect -f '{{.Id}}' "$VLLM")" >"$record"
}

build() {
  local started
  started=$(now)
  [[ $BASE_IMAGE == "$DEFAULT_BASE" ]] && build_base
  build_one "$OPERATOR" "$ROOT" -f "$ROOT/operator/Dockerfile" --build-arg "BASE_IMAGE=$BASE_IMAGE"
  build_one "$TRAINER" "$ROOT" -f "$ROOT/trainer_image/Dockerfile" --build-arg "CUDA_IMAGE=$BASE_IMAGE"
  build_one "$TGI" "$ROOT/tests" -f "$ROOT/tests/e2e/tgi-test.Dockerfile" --build-arg "TRAINER_IMAGE=$TRAINER"
  build_vllm
  local image
  for image in "${IMAGES[@]}"; do
    "$DOCKER" image inspect -f "$image {{.Id}} {{.Size}}" "$image"
  done >"$IDS_FILE.tmp"
  mv "$IDS_FILE.tmp" "$IDS_FILE"
  log "all images built in $(since "$started") s:"
  awk '{ printf "[images]   %-28s %s %7.2f GB\n", $1, substr($2, 1, 19), $3 / 1e9 }' "$IDS_FILE" >&2
}

built_id() {
  [[ -s $IDS_FILE ]] || die "no images built yet for tag $TAG (run hack/images.sh build)"
  awk -v i="$1" '$1 == i { print $2 }' "$IDS_FILE"
}

# ------------------------------------------------------------------------------------------- load
# The image ID Docker gives an image is the digest of its config; an image imported from `docker save` into
# containerd keeps that config, so the two compare directly.
containerd_image_id() {
  local ctr=$1 ref=$2 digest
  digest=$($ctr images ls "name==$ref" 2>/dev/null | awk 'NR > 1 { print $3; exit }')
  [[ -n $digest ]] || return 0
  $ctr content get "$digest" | python3 -c '
import json, sys
doc = json.load(sys.stdin)
print((doc.get("config") or {}).get("digest", ""))'
}

default_socket() {
  local json=$CLUSTER_DIR/real-0/node.json
  if [[ -r $json ]]; then
    python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); print(d.get("containerd_socket") or d.get("containerdSocket") or d.get("socket") or "")' "$json"
  fi
}

# discard_layer_archives CTR IMAGE...: containerd keeps an imported layer twice, as the archive in its content
# store and unpacked as a snapshot. Pods run from the snapshots (with the image's manifest and config, which
# stay), so the archives go once the import has unpacked them -- what containerd's CRI does for the images it
# pulls with discard_unpacked_layers. It halves the store: the trainer and vLLM images are ~7 GB each. A later
# import brings the archives it needs again.
discard_layer_archives() {
  local ctr=$1 image manifest
  shift
  for image; do
    manifest=$($ctr images ls "name==docker.io/library/$image" | awk 'NR > 1 { print $3; exit }')
    [[ -n $manifest ]] || die "$image is not in containerd after its import"
    $ctr content get "$manifest" \
      | python3 -c 'import json, sys; print("\n".join(layer["digest"] for layer in json.load(sys.stdin)["layers"]))' \
      | xargs -r $ctr content rm >/dev/null
  done
}

# import_batch CTR SOCKET IMAGE...: one archive of IMAGEs into containerd, replacing the versions it has.
import_batch() {
  local ctr=$1 socket=$2 image want have
  shift 2
  # The version each import replaces would be garbage right after it; removed first, the store holds one
  # version of a 7 GB image at a time, not two.
  for image; do
    if [[ -n $(containerd_image_id "$ctr" "docker.io/library/$image") ]]; then
      $ctr images rm --sync "docker.io/library/$image" >/dev/null
    fi
  done
  # Named by tag only (docker.io/library/NAME:TAG, as the kubelet looks it up), so the kubelet reports the
  # image ID (sha256:<config digest>) as the container's imageID: the tests compare it with the build's.
  "$DOCKER" save "$@" | $ctr images import - >>"$CACHE/logs/load.log" 2>&1 \
    || { tail -20 "$CACHE/logs/load.log" >&2; die "importing $* into $socket failed"; }
  for image; do
    want=$(built_id "$image")
    have=$(containerd_image_id "$ctr" "docker.io/library/$image")
    [[ $have == "$want" ]] || die "$image: containerd has ${have:-nothing}, expected $want"
  done
  discard_layer_archives "$ctr" "$@"
}

load() {
  local socket=${1:-${KUBETUNE_CONTAINERD_ADDRESS:-}}
  [[ -n $socket ]] || socket=$(default_socket)
  [[ -n $socket ]] || socket=$CLUSTER_DIR/real-0/containerd.sock
  [[ -S $socket ]] || die "no containerd socket at $socket (start the real node: python -m tests.support.controlplane up --real-node)"
  command -v ctr >/dev/null || die "ctr (containerd's client) is missing"
  local ctr="ctr --address $socket --namespace k8s.io" image want have started group batch needed=()
  for image in "${IMAGES[@]}"; do
    want=$(built_id "$image")
    have=$(containerd_image_id "$ctr" "docker.io/library/$image")
    if [[ -n $want && $want == "$have" ]]; then
      log "$image is loaded already (${want:7:12})"
    else
      needed+=("$image")
    fi
  done
  ((${#needed[@]})) || return 0
  dockerd_up
  started=$(now)
  : >"$CACHE/logs/load.log"
  for group in "${LOAD_GROUPS[@]}"; do
    batch=()
    for image in $group; do
      [[ " ${needed[*]} " != *" $image "* ]] || batch+=("$image")
    done
    ((${#batch[@]} == 0)) || import_batch "$ctr" "$socket" "${batch[@]}"
  done
  log "${needed[*]} loaded into $socket in $(since "$started") s"
}

kind_load() {
  local name=${1:-${KUBETUNE_KIND_NAME:-kubetune-test}} started
  started=$(now)
  log "kind load docker-image ${IMAGES[*]} --name $name"
  "${KIND:-kind}" load docker-image "${IMAGES[@]}" --name "$name"
  log "loaded into kind cluster $name in $(since "$started") s"
}

# ------------------------------------------------------------------------------------------- main
if [[ ${1:-} == tools ]]; then # no lock: another worktree's build may hold it for minutes
  pick_docker
  docker_answers || install_tools
  exit 0
fi
exec 9>"$CACHE/images.lock"
flock 9
cmd=${1:-build}
shift || true
case $cmd in
  build)
    trap stop_if_started EXIT
    dockerd_up
    build
    ;;
  load)
    trap stop_if_started EXIT
    pick_docker
    load "$@"
    ;;
  kind-load) pick_docker; kind_load "$@" ;;
  ids) cat "$IDS_FILE" ;;
  dockerd-up) dockerd_up ;;
  dockerd-down) dockerd_down ;;
  *) echo "usage: $0 [build|load [SOCKET]|kind-load [NAME]|ids|dockerd-up|dockerd-down|tools]" >&2; exit 2 ;;
esac
