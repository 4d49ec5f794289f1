#!/usr/bin/env bash
# Go's caches for kubetune's own Go builds (hack/testbin.sh, hack/gotools.sh, hack/realnode.sh).
#
#   source hack/gocache.sh     export GOCACHE and GOMODCACHE: kubetune's own folders, not the user's
#   hack/gocache.sh size       print how much they hold
#   hack/gocache.sh trim       empty them (`go clean -cache -modcache`), print what that freed
#
# Why kubetune's own: the builds' results are cached as binaries in ~/.cache/kubetune/testbin, one folder per
# pinned version, so once they exist Go's module and build caches are never read again, and they are large
# (about 8 GB after the control plane, the real node and the test tools: 2.7 GB of modules, 5.7 GB of compiled
# packages). `make test` trims them once every binary is built (the go-caches phase), which lowers a cold
# run's disk peak by that much; they live in $KUBETUNE_GO_CACHE (default ~/.cache/kubetune/go) so that the trim
# never touches a developer's own Go caches. A pin change rebuilds from empty caches, as a new machine does.
KUBETUNE_GO_CACHE=${KUBETUNE_GO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubetune/go}
export GOCACHE=$KUBETUNE_GO_CACHE/build
export GOMODCACHE=$KUBETUNE_GO_CACHE/mod

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  set -euo pipefail
  GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
  size() { du -sh "$KUBETUNE_GO_CACHE" 2>/dev/null | cut -f1 || echo 0; }
  case "${1:-}" in
    size) echo "$KUBETUNE_GO_CACHE: $(size)" ;;
    trim)
      [[ -d $KUBETUNE_GO_CACHE ]] || { echo "[gocache] $KUBETUNE_GO_CACHE: nothing to trim"; exit 0; }
      before=$(size)
      # go clean knows the module cache's read-only folders; rm removes what a Go without it left.
      if [[ -x $GO ]]; then "$GO" clean -cache -modcache; fi
      rm -rf "$GOCACHE" "$GOMODCACHE"
      echo "[gocache] trimmed $KUBETUNE_GO_CACHE ($before; the binaries stay in the testbin cache)"
      ;;
    *) echo "usage: $0 size|trim (or source it)" >&2; exit 2 ;;
  esac
fi
