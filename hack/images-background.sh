#!/usr/bin/env bash
# Build the e2e images (hack/images.sh build) in the background while `make test` compiles its Go binaries.
#
#   hack/images-background.sh start   start `hack/images.sh build` detached, when the e2e tests will build the
#                                     images on this host; otherwise say why not and do nothing
#   hack/images-background.sh wait    wait for the build `start` began; exit 1, with the end of its log, when
#                                     it failed (nothing to wait for: exit 0 at once)
#
# Why: on a new machine the image build (debootstrap, then pip downloading and installing ~4 GB inside
# `docker build`) takes about 13 minutes, much of it waiting on the network and the disk (pip installing one
# wheel at a time), and the Go builds of testbin, gotools and the real node take about as long on both cores;
# one after the other they added up. `make test` starts the build first and waits
# for it after lint, before pytest: it never overlaps the timing-sensitive cluster tests. When nothing
# changed the build is a few seconds, so a warm `make test` loses nothing.
#
# The same decision as tests/e2e/conftest.py: no build for an external cluster (KUBETUNE_TEST_KUBECONFIG),
# nor, on the local control plane, where this host cannot run containers (hack/realnode.sh can-run).
# The build's log, PID and exit code are in <cluster dir>/images-build/ (.cluster by default).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
STATE=${KUBETUNE_CLUSTER_DIR:-$ROOT/.cluster}/images-build
LOG=$STATE/build.log

log() { printf '[images-background] %s\n' "$*" >&2; }

running() { # the PID of a background build still running, if any (not another process given its PID since)
  local pid
  pid=$(cat "$STATE/pid" 2>/dev/null) || return 1
  [[ -n $pid && -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$STATE/rc" && echo "$pid"
}

why_not() { # why the e2e tests will not build images here (empty when they will)
  if [[ -n ${KUBETUNE_TEST_KUBECONFIG:-} ]]; then
    echo "KUBETUNE_TEST_KUBECONFIG is set (the e2e tests skip on an external cluster)"
  elif [[ ${KUBETUNE_TEST_CLUSTER:-local} != kind ]]; then
    local problem
    problem=$(bash "$HERE/realnode.sh" can-run) || echo "this host cannot run containers: $problem"
  fi
}

start() {
  local pid why
  if pid=$(running); then
    log "a background image build is running already (pid $pid, log $LOG)"
    return 0
  fi
  rm -f "$STATE/pid" "$STATE/rc" "$STATE/started"
  why=$(why_not)
  if [[ -n $why ]]; then
    log "not building the images in the background: $why"
    return 0
  fi
  mkdir -p "$STATE"
  # apt-get (docker.io, debootstrap) now, in the foreground: beside hack/realnode.sh's apt-get, one of the
  # two would find dpkg locked. A failure here is left to the e2e tests' own build to report.
  if ! bash "$HERE/images.sh" tools >"$LOG" 2>&1; then
    log "could not install the image build's tools (the e2e tests will try again): $(tail -3 "$LOG")"
    return 0
  fi
  date +%s >"$STATE/started"
  # setsid: the build outlives this recipe line of make and is not killed by a terminal's ^C to make alone.
  setsid bash -c 'bash "$1" build; echo $? >"$2.tmp"; mv "$2.tmp" "$2"' images-build "$HERE/images.sh" "$STATE/rc" \
    >>"$LOG" 2>&1 </dev/null &
  echo $! >"$STATE/pid"
  log "building the images in the background (pid $!, log $LOG)"
}

wait_for() {
  [[ -s $STATE/pid ]] || return 0
  local pid started rc
  if pid=$(running) && [[ ! -s $STATE/rc ]]; then
    log "waiting for the background image build (pid $pid, log $LOG)"
    while running >/dev/null && [[ ! -s $STATE/rc ]]; do sleep 2; done
  fi
  rc=$(cat "$STATE/rc" 2>/dev/null || echo "none")
  started=$(cat "$STATE/started" 2>/dev/null || date +%s)
  rm -f "$STATE/pid"
  if [[ $rc != 0 ]]; then
    tail -30 "$LOG" >&2
    log "error: the background image build failed (exit ${rc/none/unknown: it died without one}); log $LOG"
    return 1
  fi
  log "images built in the background ($(($(date +%s) - started)) s since it started)"
}

case "${1:-}" in
  start) start ;;
  wait) wait_for ;;
  *) echo "usage: $0 start|wait" >&2; exit 2 ;;
esac
