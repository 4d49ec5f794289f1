#!/usr/bin/env bash
# How the real node gets the e2e images: importing image archives (today: hack/images.sh load, `docker save |
# ctr images import`) against pulling them from the test bed's registry (hack/registry) -- measured side by side
# (docs/benchmarks.md).
#
#   flock /work/coord/realnode.lock bash -c 'python -m tests.support.controlplane up --real-node &&
#     bash hack/bench_image_registry.sh; python -m tests.support.controlplane down'
#
# Needs the images built (hack/images.sh build) and the real node's containerd running. Steps, each timed:
#   1. push the three :dev images to a registry on 127.0.0.1 (docker treats loopback registries as plain HTTP)
#      whose storage is kept in ~/.cache/kubetune/image-registry (as the node's image store is kept): the
#      first push uploads every layer, a later one only what changed;
#   2. pull them into the node's containerd (`ctr images pull --plain-http`, namespace k8s.io, as the kubelet
#      would through a mirror), after removing them under the registry's names;
#   3. a source change: an image with one more small layer on top of kubetune-trainer:dev (what a change to
#      kubetune's sources is: the last layer), then (a) docker save | ctr images import of it, as
#      hack/images.sh load does, against (b) docker push + ctr pull of it.
# Nothing the e2e tests use is changed: the node keeps its docker.io/library/*:dev images; what this adds
# under the registry's names is removed at the end. The registry is stopped by its PID.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CLUSTER_DIR=${KUBETUNE_CLUSTER_DIR:-$ROOT/.cluster}
STORE=${KUBETUNE_IMAGE_REGISTRY_STORE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubetune/image-registry}
PORT=${KUBETUNE_IMAGE_REGISTRY_PORT:-5077}
HOST=127.0.0.1:$PORT
TAG=${KUBETUNE_IMAGE_TAG:-dev}
IMAGES=(kubetune-operator kubetune-trainer kubetune-tgi-test)
DOCKER=${DOCKER:-$( [[ -x /usr/bin/docker ]] && echo /usr/bin/docker || echo docker)}

log() { printf '[bench-images] %s\n' "$*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

socket=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["containerd_socket"])' "$CLUSTER_DIR/real-0/node.json")
ctr="ctr --address $socket --namespace k8s.io"
registry=$(bash "$ROOT/hack/gotools.sh" registry | sed -n 's/^REGISTRY=//p')

mkdir -p "$STORE"
cat >"$STORE/config.yml" <<EOF
version: 0.1
log: {level: warn, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $STORE/data}, delete: {enabled: true}}
http: {addr: $HOST, secret: kubetune-bench}
EOF
"$registry" serve "$STORE/config.yml" >"$STORE/registry.log" 2>&1 &
REGISTRY_PID=$!
bash "$ROOT/hack/images.sh" dockerd-up
cleanup() {
  kill "$REGISTRY_PID" 2>/dev/null || true
  for image in "${IMAGES[@]}" kubetune-trainer-changed; do
    $ctr images rm "$HOST/$image:$TAG" >/dev/null 2>&1 || true
    "$DOCKER" rmi "$HOST/$image:$TAG" >/dev/null 2>&1 || true
  done
  $ctr images rm docker.io/library/kubetune-trainer-changed:$TAG >/dev/null 2>&1 || true
  "$DOCKER" rmi kubetune-trainer-changed:$TAG >/dev/null 2>&1 || true
  bash "$ROOT/hack/images.sh" dockerd-down || true
}
trap cleanup EXIT
for _ in $(seq 1 50); do curl -fsS "http://$HOST/v2/" >/dev/null 2>&1 && break; sleep 0.2; done

log "registry store: $(du -sh "$STORE/data" 2>/dev/null | cut -f1 || echo empty)"
started=$(now)
for image in "${IMAGES[@]}"; do
  "$DOCKER" tag "$image:$TAG" "$HOST/$image:$TAG"
  "$DOCKER" push -q "$HOST/$image:$TAG" >/dev/null
done
echo "push of the three images: $(since "$started") s"

for image in "${IMAGES[@]}"; do $ctr images rm "$HOST/$image:$TAG" >/dev/null 2>&1 || true; done
started=$(now)
for image in "${IMAGES[@]}"; do
  $ctr images pull --plain-http "$HOST/$image:$TAG" >/dev/null
done
echo "pull of the three images into the node: $(since "$started") s"

# A source change: one more layer on top of the trainer image.
printf 'FROM kubetune-trainer:%s\nRUN echo "%s" > /tmp/kubetune-bench-change\n' "$TAG" "$(date +%s%N)" \
  | "$DOCKER" build -q -t "kubetune-trainer-changed:$TAG" - >/dev/null
started=$(now)
"$DOCKER" save "kubetune-trainer-changed:$TAG" | $ctr images import - >/dev/null
echo "after a source change, docker save | ctr import of the trainer image: $(since "$started") s"
"$DOCKER" tag "kubetune-trainer-changed:$TAG" "$HOST/kubetune-trainer-changed:$TAG"
started=$(now)
"$DOCKER" push -q "$HOST/kubetune-trainer-changed:$TAG" >/dev/null
pushed=$(since "$started")
started=$(now)
$ctr images pull --plain-http "$HOST/kubetune-trainer-changed:$TAG" >/dev/null
echo "after a source change, docker push + ctr pull of the trainer image: $pushed s + $(since "$started") s"
log "registry store: $(du -sh "$STORE/data" | cut -f1)"
