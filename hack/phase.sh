#!/usr/bin/env bash
# Time one phase of `make test` and say how long it took, so a run's log shows where its time went.
#
#   hack/phase.sh NAME CMD...     run CMD; print "[phase] NAME: N s" (or "failed after N s"), append it to the log
#   hack/phase.sh --reset         start a new log (make test's first phase)
#   hack/phase.sh --summary       print the log's phases and their sum
#
# The log is <cluster dir>/phases.log (.cluster by default; KUBETUNE_CLUSTER_DIR moves it).
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LOG=${KUBETUNE_CLUSTER_DIR:-$HERE/../.cluster}/phases.log

case "${1:-}" in
  --reset) mkdir -p "$(dirname "$LOG")" && : >"$LOG"; exit 0 ;;
  --summary)
    [[ -s $LOG ]] || exit 0
    awk -F'\t' '{ printf "[phase] %-18s %6d s  %s\n", $1, $2, $3; total += $2 }
                END { printf "[phase] %-18s %6d s (%d min %d s)\n", "all", total, total / 60, total % 60 }' "$LOG"
    exit 0 ;;
esac
name=$1
shift
start=$(date +%s)
"$@"
rc=$?
took=$(($(date +%s) - start))
mkdir -p "$(dirname "$LOG")"
if [[ $rc == 0 ]]; then
  printf '[phase] %s: %d s\n' "$name" "$took" >&2
  printf '%s\t%d\tok\n' "$name" "$took" >>"$LOG"
else
  printf '[phase] %s: failed (exit %d) after %d s\n' "$name" "$rc" "$took" >&2
  printf '%s\t%d\tfailed (exit %d)\n' "$name" "$took" "$rc" >>"$LOG"
fi
exit $rc
