"""The container's termination message: why this attempt ended, where the kubelet (and so the operator's
failed-attempt condition) reads it, and the exit code that goes with it. No heavy imports: the launcher
reads it too."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger("kubetune_trainer.termination")

STALLED = "Stalled"
# EX_TEMPFAIL: a temporary failure, worth another attempt (that resumes from the checkpoint).
STALLED_EXIT_CODE = 75
TERMINATION_LOG = "/dev/termination-log"  # the pod's default terminationMessagePath
ENV_TERMINATION_LOG = "KUBETUNE_TERMINATION_LOG"  # another path (local runs, tests)
MAX_BYTES = 4096  # what the kubelet keeps


def path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get(ENV_TERMINATION_LOG) or TERMINATION_LOG)


def write(message: str, where: str | Path | None = None) -> bool:
    """Write MESSAGE as the termination message; False when not possible (no such file outside a pod)."""
    target = Path(where) if where is not None else path()
    try:
        target.write_text(message[:MAX_BYTES])
        return True
    except OSError as error:
        log.debug("cannot write the termination message to %s: %s", target, error)
        return False


def stalled_since(started: float, env: Mapping[str, str] | None = None) -> bool:
    """A worker wrote a Stalled termination message at or after STARTED (time.time())."""
    target = path(env)
    try:
        fresh = target.stat().st_mtime >= started - 1
        return fresh and target.read_text()[: len(STALLED) + 1] == f"{STALLED}:"
    except OSError:
        return False
