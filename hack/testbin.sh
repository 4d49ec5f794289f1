#!/usr/bin/env bash
# Build the pinned binaries of the test control plane from the Go module proxy.
#
#   hack/testbin.sh            build whatever is missing, print the bin dirs
#   hack/testbin.sh --check    exit 0 when everything is built, 1 otherwise (builds nothing)
#   hack/testbin.sh --print    print KEY=dir lines for each component (builds nothing)
#   hack/testbin.sh node       build (or find) only the real node's kubelet and kube-proxy (same version,
#                              own folder kubernetes-node-<version>; see hack/realnode.sh), print NODE=dir
#   hack/testbin.sh node --check
#
# Results land in $KUBETUNE_TESTBIN_DIR (default ~/.cache/kubetune/testbin), one folder per
# component and version, e.g. kubernetes-v1.36.3/kube-apiserver. A folder exists only once its
# build succeeded (built in a temp dir, then renamed), so a half-finished build is never reused.
# Go's module and build caches are kubetune's own (hack/gocache.sh): `make test` empties them once every
# binary is built.
#
# kube-* and etcd cannot be `go install`ed (their go.mod files have replace directives), so each is
# built from a throw-away wrapper module that requires the release and, for Kubernetes, replaces
# every k8s.io/* staging module of that release's go.mod (listed there at v0.0.0) with v0.<minor>.<patch>.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.36.3}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
KWOK_VERSION=${KWOK_VERSION:-v0.8.0}
HELM_VERSION=${HELM_VERSION:-v3.21.4}

TESTBIN_DIR=${KUBETUNE_TESTBIN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kubetune/testbin}
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
# shellcheck source=hack/gocache.sh
source "$(dirname "${BASH_SOURCE[0]}")/gocache.sh"

# Never download a toolchain: the pinned tags' go.mod `go` lines are satisfied by the installed Go.
export GOTOOLCHAIN=local
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-buildvcs=false"
export CGO_ENABLED=0

K8S_DIR=$TESTBIN_DIR/kubernetes-$K8S_VERSION
ETCD_DIR=$TESTBIN_DIR/etcd-$ETCD_VERSION
KWOK_DIR=$TESTBIN_DIR/kwok-$KWOK_VERSION
HELM_DIR=$TESTBIN_DIR/helm-$HELM_VERSION
# The real node's kubelet and kube-proxy: built only when a real node is wanted (hack/realnode.sh).
NODE_DIR=$TESTBIN_DIR/kubernetes-node-$K8S_VERSION

log() { printf '[testbin] %s\n' "$*" >&2; }

print_dirs() {
  echo "KUBERNETES=$K8S_DIR"
  echo "ETCD=$ETCD_DIR"
  echo "KWOK=$KWOK_DIR"
  echo "HELM=$HELM_DIR"
}

complete() {
  [[ -x $K8S_DIR/kube-apiserver && -x $K8S_DIR/kube-controller-manager && -x $K8S_DIR/kube-scheduler \
    && -x $K8S_DIR/kubectl && -x $ETCD_DIR/etcd && -x $KWOK_DIR/kwok && -d $KWOK_DIR/stages && -x $HELM_DIR/helm ]]
}

node_complete() { [[ -x $NODE_DIR/kubelet && -x $NODE_DIR/kube-proxy ]]; }

MODE=control-plane
if [[ ${1:-} == node ]]; then
  MODE=node
  shift
  case "${1:-}" in
    --print) echo "NODE=$NODE_DIR"; exit 0 ;;
    --check) node_complete; exit $? ;;
    "") ;;
    *) echo "usage: $0 node [--check|--print]" >&2; exit 2 ;;
  esac
  if node_complete; then
    echo "NODE=$NODE_DIR"
    exit 0
  fi
else
  case "${1:-}" in
    --print) print_dirs; exit 0 ;;
    --check) complete; exit $? ;;
    "") ;;
    *) echo "usage: $0 [--check|--print|node]" >&2; exit 2 ;;
  esac
  if complete; then
    print_dirs
    exit 0
  fi
fi

[[ -x $GO ]] || { log "no Go toolchain found (set GO=/path/to/go)"; exit 1; }
mkdir -p "$TESTBIN_DIR"
# One build at a time (make testbin and the pytest fixture may race).
exec 9>"$TESTBIN_DIR/.lock"
flock 9

log "$("$GO" version); GOMODCACHE=$("$GO" env GOMODCACHE) GOCACHE=$("$GO" env GOCACHE)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/kubetune-testbin.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

timed() { # timed NAME CMD...: run CMD, append its wall time to $TESTBIN_DIR/build-times.txt
  local name=$1 start end
  shift
  start=$(date +%s)
  "$@"
  end=$(date +%s)
  log "$name built in $((end - start)) s"
  echo "$(date -u +%FT%TZ) $name $((end - start))s" >>"$TESTBIN_DIR/build-times.txt"
}

# Wrapper module: require MODULE@VERSION (+ replaces), build PKGS into OUT.
build_wrapper() { # build_wrapper OUT LDFLAGS MODULE VERSION REPLACES_FILE PKG...
  local out=$1 ldflags=$2 module=$3 version=$4 replaces=$5
  shift 5
  local dir=$WORK/wrap-${module//\//_}
  mkdir -p "$dir"
  {
    echo "module kubetune.local/testbin"
    echo
    echo "go $("$GO" env GOVERSION | sed -E 's/^go([0-9]+\.[0-9]+).*/\1/').0"
    echo
    echo "require $module $version"
    [[ -s $replaces ]] && { echo; cat "$replaces"; }
  } >"$dir/go.mod"
  # tools.go-less: `go get` of the main packages records every dependency they need in go.mod/go.sum.
  (cd "$dir" && "$GO" get "${@/%/@$version}")
  local tmpout=$out.tmp.$$
  rm -rf "$tmpout"
  mkdir -p "$tmpout"
  (cd "$dir" && "$GO" build -trimpath -ldflags "$ldflags" -o "$tmpout/" "$@")
  rm -rf "$out"
  mv "$tmpout" "$out"
}

kubernetes_replaces() { # kubernetes_replaces FILE: a replace line per staging module of the release
  local gomod=$WORK/kubernetes.go.mod staging_version replaces=$1
  [[ -s $replaces ]] && return 0
  # The staging modules: whatever the release's own go.mod replaces with ./staging/src/k8s.io/*.
  (cd "$WORK" && "$GO" mod download -json "k8s.io/kubernetes@$K8S_VERSION") >"$WORK/k8s.json"
  cp "$(sed -nE 's/^\s*"GoMod": "(.*)",?$/\1/p' "$WORK/k8s.json")" "$gomod"
  staging_version="v0.${K8S_VERSION#v1.}"
  awk -v v="$staging_version" '
    /=>/ && $0 ~ /\.\/staging\/src\/k8s\.io\// {
      for (i = 1; i <= NF; i++) if ($i ~ /^k8s\.io\//) { print "replace " $i " => " $i " " v; break }
    }' "$gomod" | sort -u >"$replaces"
  local n; n=$(wc -l <"$replaces")
  [[ $n -gt 10 ]] || { log "found only $n staging modules in k8s.io/kubernetes@$K8S_VERSION go.mod"; exit 1; }
  log "$n staging modules replaced with $staging_version"
}

kubernetes_ldflags() {
  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  local date; date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  local ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
  done
  echo "$ldflags"
}

build_kubernetes() {
  [[ -x $K8S_DIR/kube-apiserver && -x $K8S_DIR/kube-controller-manager && -x $K8S_DIR/kube-scheduler && -x $K8S_DIR/kubectl ]] && return 0
  log "building kube-apiserver, kube-controller-manager, kube-scheduler, kubectl $K8S_VERSION"
  kubernetes_replaces "$WORK/kubernetes.replaces"
  timed "kubernetes-$K8S_VERSION" build_wrapper "$K8S_DIR" "$(kubernetes_ldflags)" k8s.io/kubernetes "$K8S_VERSION" \
    "$WORK/kubernetes.replaces" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
}

build_node() {
  node_complete && return 0
  log "building kubelet, kube-proxy $K8S_VERSION (the real node)"
  kubernetes_replaces "$WORK/kubernetes.replaces"
  timed "kubernetes-node-$K8S_VERSION" build_wrapper "$NODE_DIR" "$(kubernetes_ldflags)" k8s.io/kubernetes "$K8S_VERSION" \
    "$WORK/kubernetes.replaces" k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy
}

build_etcd() {
  [[ -x $ETCD_DIR/etcd ]] && return 0
  log "building etcd $ETCD_VERSION"
  # go.etcd.io/etcd/server/v3's root package is the etcd main package; its go.mod's replace
  # directives (../api etc.) only matter inside etcd's repo, the modules are published at the same tag.
  local ldflags="-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=$ETCD_VERSION"
  timed "etcd-$ETCD_VERSION" build_wrapper "$ETCD_DIR" "$ldflags" go.etcd.io/etcd/server/v3 "$ETCD_VERSION" /dev/null \
    go.etcd.io/etcd/server/v3
  mv "$ETCD_DIR/v3" "$ETCD_DIR/etcd" 2>/dev/null || mv "$ETCD_DIR/server" "$ETCD_DIR/etcd" 2>/dev/null || true
  [[ -x $ETCD_DIR/etcd ]] || { log "etcd binary not found in $ETCD_DIR: $(ls "$ETCD_DIR")"; exit 1; }
}

go_install() { # go_install OUT PKG@VERSION LDFLAGS
  local out=$1 pkg=$2 ldflags=$3 tmpout=$1.tmp.$$
  rm -rf "$tmpout"
  mkdir -p "$tmpout"
  (cd "$WORK" && GOBIN=$tmpout "$GO" install -trimpath -ldflags "$ldflags" "$pkg")
  rm -rf "$out"
  mv "$tmpout" "$out"
}

build_kwok() {
  if [[ ! -x $KWOK_DIR/kwok ]]; then
    log "building kwok $KWOK_VERSION"
    timed "kwok-$KWOK_VERSION" go_install "$KWOK_DIR" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" \
      "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}"
  fi
  if [[ ! -d $KWOK_DIR/stages ]]; then
    # The kwok binary has no built-in Stages (kwokctl adds them); keep the release's own Stage
    # manifests next to the binary so the control plane can use exactly this version's.
    local src tmp=$KWOK_DIR/stages.tmp.$$
    src=$(cd "$WORK" && "$GO" mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -nE 's/^\s*"Dir": "(.*)",?$/\1/p')
    [[ -d $src/kustomize/stage ]] || { log "kwok stages not found under $src"; exit 1; }
    rm -rf "$tmp"
    mkdir -p "$tmp"
    (cd "$src/kustomize/stage" && find . -name '*.yaml' ! -name kustomization.yaml ! -path '*/testdata/*' \
      -exec install -D -m 0644 {} "$tmp/{}" \;)
    mv "$tmp" "$KWOK_DIR/stages"
  fi
}

build_helm() {
  [[ -x $HELM_DIR/helm ]] && return 0
  log "building helm $HELM_VERSION"
  timed "helm-$HELM_VERSION" go_install "$HELM_DIR" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" \
    "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
}

if [[ $MODE == node ]]; then
  build_node
  node_complete || { log "build finished but kubelet or kube-proxy is missing"; exit 1; }
  echo "NODE=$NODE_DIR"
  exit 0
fi

build_etcd
build_kubernetes
build_kwok
build_helm
complete || { log "build finished but some binaries are missing"; exit 1; }
print_dirs
