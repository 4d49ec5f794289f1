#!/usr/bin/env bash
# Build the pinned Go test tools of the GitOps checks from the Go module proxy.
#
#   hack/gotools.sh            build whatever is missing, print KEY=path lines
#   hack/gotools.sh --check    exit 0 when everything is built, 1 otherwise (builds nothing)
#   hack/gotools.sh --print    print KEY=path lines (builds nothing)
#   hack/gotools.sh kstatus    build (or find) only the named tools: kstatus | promtool | argocd-lua | coredns |
#                              registry | crane
#   hack/gotools.sh --check coredns    exit 0 when the named tools are built
#
# - kstatus: hack/kstatus (a tiny program around sigs.k8s.io/cli-utils' kstatus, the health
#   assessment Flux uses). Cached under a name made of the cli-utils version and a hash of the
#   program's sources, so an edit to hack/kstatus rebuilds it.
# - promtool: github.com/prometheus/prometheus/cmd/promtool, `go install`ed at a pinned version with the
#   build tag remove_all_sd: Prometheus' plugins/plugin_*.go (`//go:build !remove_all_sd || enable_*_sd`) then
#   leave out every service-discovery SDK (AWS, Azure, GCP, Kubernetes, ...), which the tests never use (they
#   run only `promtool check rules` and `promtool test rules`). From empty Go caches: 102 s instead of
#   478 s (docs/testing.md).
#   Cached as promtool-<version>-nosd, so a cache holding the full build does not satisfy it.
# - argocd-lua: hack/argocd-lua, the Argo CD health checks' runtime: gopher-lua (github.com/yuin/gopher-lua, the
#   Lua VM Argo CD embeds), run the way Argo CD's controller runs a health.lua (see its main.go). Cached like
#   kstatus, under the gopher-lua version and a hash of the program's sources.
#   promtool also parses the dashboard's PromQL (`promtool --experimental promql format`, Prometheus's parser).
# - coredns: the real node's cluster DNS (tests/support/realnode.py), built only when named; it runs as a
#   host process serving the cluster domain to the real node's pods. hack/coredns: CoreDNS' coremain with
#   only the plugins the node's Corefile uses (CoreDNS' own main links every plugin, cloud DNS SDKs
#   included: 281 s cold against 205 s, docs/testing.md). Cached like kstatus, under the CoreDNS version
#   and a hash of the program's sources.
# - registry: the OCI registry of the test bed (tests/support/oci_registry.py), built only when named.
#   hack/registry: the CNCF distribution registry's RootCmd with only the filesystem/in-memory storage drivers
#   and htpasswd auth linked in, plus `registry htpasswd USER PASSWORD`. Cached like kstatus, under the
#   distribution version and a hash of the program's sources.
# - crane: github.com/google/go-containerregistry/cmd/crane, `go install`ed at a pinned version, built only
#   when named: the second registry client that reads back what the trainer pushed with oras.
#
# Like hack/testbin.sh: results land in $KUBETUNE_TESTBIN_DIR (default ~/.cache/kubetune/testbin),
# a folder exists only once its build succeeded, no toolchain is ever downloaded, and Go's caches are
# kubetune's own (hack/gocache.sh).
set -euo pipefail

PROMETHEUS_VERSION=${PROMETHEUS_VERSION:-v0.316.0}   # Prometheus 3.16's Go module version

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TESTBIN_DIR=${KUBETUNE_TESTBIN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kubetune/testbin}
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
# shellcheck source=hack/gocache.sh
source "$HERE/gocache.sh"

export GOTOOLCHAIN=local
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=mod -buildvcs=false"
export CGO_ENABLED=0

CLI_UTILS_VERSION=$(sed -nE 's/^\s*(require )?sigs\.k8s\.io\/cli-utils (v[^ ]+).*/\2/p' "$HERE/kstatus/go.mod")
KSTATUS_HASH=$(cat "$HERE/kstatus/go.mod" "$HERE/kstatus/go.sum" "$HERE/kstatus/main.go" | sha256sum | cut -c1-12)
KSTATUS_DIR=$TESTBIN_DIR/kstatus-cli-utils-$CLI_UTILS_VERSION-$KSTATUS_HASH
PROMTOOL_DIR=$TESTBIN_DIR/promtool-$PROMETHEUS_VERSION-nosd
GOPHER_LUA_VERSION=$(sed -nE 's/^\s*(require )?github\.com\/yuin\/gopher-lua (v[^ ]+).*/\2/p' "$HERE/argocd-lua/go.mod")
ARGOCD_LUA_HASH=$(cat "$HERE/argocd-lua/go.mod" "$HERE/argocd-lua/go.sum" "$HERE/argocd-lua/main.go" | sha256sum | cut -c1-12)
ARGOCD_LUA_DIR=$TESTBIN_DIR/argocd-lua-gopher-lua-$GOPHER_LUA_VERSION-$ARGOCD_LUA_HASH
COREDNS_VERSION=$(sed -nE 's/^\s*(require )?github\.com\/coredns\/coredns (v[^ ]+).*/\2/p' "$HERE/coredns/go.mod")
COREDNS_HASH=$(cat "$HERE/coredns/go.mod" "$HERE/coredns/go.sum" "$HERE/coredns/main.go" | sha256sum | cut -c1-12)
COREDNS_DIR=$TESTBIN_DIR/coredns-$COREDNS_VERSION-$COREDNS_HASH
DISTRIBUTION_VERSION=$(sed -nE 's/^\s*(require )?github\.com\/distribution\/distribution\/v3 (v[^ ]+).*/\2/p' "$HERE/registry/go.mod")
REGISTRY_HASH=$(cat "$HERE/registry/go.mod" "$HERE/registry/go.sum" "$HERE/registry/main.go" | sha256sum | cut -c1-12)
REGISTRY_DIR=$TESTBIN_DIR/registry-$DISTRIBUTION_VERSION-$REGISTRY_HASH
CRANE_VERSION=${CRANE_VERSION:-v0.22.1}   # github.com/google/go-containerregistry
CRANE_DIR=$TESTBIN_DIR/crane-$CRANE_VERSION

log() { printf '[gotools] %s\n' "$*" >&2; }

print_paths() {
  echo "KSTATUS=$KSTATUS_DIR/kstatus"
  echo "PROMTOOL=$PROMTOOL_DIR/promtool"
  echo "ARGOCD_LUA=$ARGOCD_LUA_DIR/argocd-lua"
  echo "COREDNS=$COREDNS_DIR/coredns"
  echo "REGISTRY=$REGISTRY_DIR/registry"
  echo "CRANE=$CRANE_DIR/crane"
}

built() { # built TOOL
  case $1 in
    kstatus) [[ -x $KSTATUS_DIR/kstatus ]] ;;
    promtool) [[ -x $PROMTOOL_DIR/promtool ]] ;;
    argocd-lua) [[ -x $ARGOCD_LUA_DIR/argocd-lua ]] ;;
    coredns) [[ -x $COREDNS_DIR/coredns ]] ;;
    registry) [[ -x $REGISTRY_DIR/registry ]] ;;
    crane) [[ -x $CRANE_DIR/crane ]] ;;
    *) log "unknown tool $1"; exit 2 ;;
  esac
}

TOOLS=(kstatus promtool argocd-lua)   # the default set; coredns, registry and crane only when named
CHECK=false
case "${1:-}" in
  --print) print_paths; exit 0 ;;
  --check) CHECK=true; shift ;;
esac
if [[ $# -gt 0 ]]; then
  TOOLS=()
  for t in "$@"; do
    case $t in
      kstatus|promtool|argocd-lua|coredns|registry|crane) TOOLS+=("$t") ;;
      *) echo "usage: $0 [--check|--print] [kstatus|promtool|argocd-lua|coredns|registry|crane...]" >&2; exit 2 ;;
    esac
  done
fi
if $CHECK; then
  for t in "${TOOLS[@]}"; do built "$t" || exit 1; done
  exit 0
fi

timed() { # timed NAME CMD...: run CMD, append its wall time to $TESTBIN_DIR/build-times.txt
  local name=$1 start end
  shift
  start=$(date +%s)
  "$@"
  end=$(date +%s)
  log "$name built in $((end - start)) s"
  echo "$(date -u +%FT%TZ) $name $((end - start))s" >>"$TESTBIN_DIR/build-times.txt"
}

build_into() { # build_into OUT CMD...: run CMD with $tmpout as output folder, then publish OUT
  local out=$1 tmpout=$1.tmp.$$
  shift
  rm -rf "$tmpout"
  mkdir -p "$tmpout"
  TMPOUT=$tmpout "$@"
  rm -rf "$out"
  mv "$tmpout" "$out"
}

build_kstatus() {
  (cd "$HERE/kstatus" && "$GO" build -trimpath -ldflags "-s -w" -o "$TMPOUT/kstatus" .)
}

build_argocd_lua() {
  (cd "$HERE/argocd-lua" && "$GO" build -trimpath -ldflags "-s -w" -o "$TMPOUT/argocd-lua" .)
}

build_promtool() {
  # Built outside any module (go install pkg@version), so its own go.mod decides every dependency.
  # remove_all_sd: no service-discovery plugins (see the header).
  (cd "$TESTBIN_DIR" && GOBIN=$TMPOUT "$GO" install -trimpath -tags remove_all_sd -ldflags "-s -w" \
    "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_VERSION")
}

build_coredns() {
  (cd "$HERE/coredns" && "$GO" build -trimpath \
    -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION" -o "$TMPOUT/coredns" .)
}

build_registry() {
  (cd "$HERE/registry" && "$GO" build -trimpath -ldflags "-s -w" -o "$TMPOUT/registry" .)
}

build_crane() {
  (cd "$TESTBIN_DIR" && GOBIN=$TMPOUT "$GO" install -trimpath -ldflags "-s -w" \
    "github.com/google/go-containerregistry/cmd/crane@$CRANE_VERSION")
}

missing=()
for t in "${TOOLS[@]}"; do built "$t" || missing+=("$t"); done
if [[ ${#missing[@]} -gt 0 ]]; then
  [[ -x $GO ]] || { log "no Go toolchain found (set GO=/path/to/go)"; exit 1; }
  mkdir -p "$TESTBIN_DIR"
  for t in "${missing[@]}"; do
    # One build of each tool at a time (pytest workers may race); another process may have built
    # it while this one waited for the lock.
    exec 9>"$TESTBIN_DIR/.$t.lock"
    flock 9
    built "$t" && { exec 9>&-; continue; }
    log "building $t"
    case $t in
      kstatus) timed "kstatus-cli-utils-$CLI_UTILS_VERSION" build_into "$KSTATUS_DIR" build_kstatus ;;
      promtool) timed "promtool-$PROMETHEUS_VERSION-nosd" build_into "$PROMTOOL_DIR" build_promtool ;;
      argocd-lua) timed "argocd-lua-gopher-lua-$GOPHER_LUA_VERSION" build_into "$ARGOCD_LUA_DIR" build_argocd_lua ;;
      coredns) timed "coredns-$COREDNS_VERSION-minimal" build_into "$COREDNS_DIR" build_coredns ;;
      registry) timed "registry-$DISTRIBUTION_VERSION-minimal" build_into "$REGISTRY_DIR" build_registry ;;
      crane) timed "crane-$CRANE_VERSION" build_into "$CRANE_DIR" build_crane ;;
    esac
    exec 9>&-
  done
fi
print_paths
