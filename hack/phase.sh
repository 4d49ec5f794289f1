#!/usr/bin/env bash
# Time one phase of `make test` and say how long it took, so a run's log shows where its time went.
#
#   hack/phase.sh NAME CMD...     run CMD; print "[phase] NAME: N s" (or "failed after N s") with the disk space
#                                 left, append it to the log
#   hack/phase.sh --reset         start a new log (make test's first phase)
#   hack/phase.sh --summary       print the log's phases and their sum
#
# The log is <cluster dir>/phases.log (.cluster by default; KUBETUNE_CLUSTER_DIR moves it). The disk space
# left after each phase is there because a cold run needs tens of GB (docs/testing.md, "Disk"): a run that
# fails with "No space left on device" then says which phase filled the disk.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LOG=${KUBETUNE_CLUSTER_DIR:-$HERE/../.cluster}/phases.log

case "${1:-}" in
  --reset) mkdir -p "$(dirname "$LOG")" && : >"$LOG"; exit 0 ;;
  --summary)
    [[ -s $LOG ]] || exit 0
    awk -F'\t' '{ printf "[phase] %-18s %6d s  %-18s %s\n", $1, $2, $3, $4; total += $2 }
                END { printf "[phase] %-18s %6d s (%d min %d s)\n", "all", total, total / 60, total % 60 }' "$LOG"
    exit 0 ;;
esac
name=$1
shift
start=$(date +%s)
"$@"
rc=$?
took=$(($(date +%s) - start))
# Free space where the caches and the checkout live (df -P: one line per file system, sizes in KiB).
free_gb() { df -Pk "$HERE" "${XDG_CACHE_HOME:-$HOME/.cache}" 2>/dev/null | awk 'NR > 1 { f = $4 / 1048576; if (min == "" || f < min) min = f } END { printf "%.1f GB free", min }'; }
disk=$(free_gb)
mkdir -p "$(dirname "$LOG")"
if [[ $rc == 0 ]]; then
  printf '[phase] %s: %d s (%s)\n' "$name" "$took" "$disk" >&2
  printf '%s\t%d\tok\t%s\n' "$name" "$took" "$disk" >>"$LOG"
else
  printf '[phase] %s: failed (exit %d) after %d s (%s)\n' "$name" "$rc" "$took" "$disk" >&2
  printf '%s\t%d\tfailed (exit %d)\t%s\n' "$name" "$took" "$rc" "$disk" >>"$LOG"
fi
exit $rc
