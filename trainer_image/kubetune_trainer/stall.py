"""Stall detection: when no training step finishes for ``training.stallTimeoutSeconds``, end the attempt.

A rank that hangs (a gloo/NCCL collective that never returns because a peer is stuck, a dead filesystem)
never raises, so nothing would retry it. A watchdog thread in every training process notices that no step
finished (nor a save, evaluation or log, which also mean progress) for that long, and then, from the
thread, since the main thread is the one that is stuck:

1. writes the reason to the container's termination message (``/dev/termination-log``, which the
   operator quotes in its failed-attempt condition),
2. rank 0 reports it in ``status.progress`` (reason ``Stalled``),
3. ends the process with ``termination.STALLED_EXIT_CODE`` (75): torchrun's agent then stops the other ranks, the pod
   fails, and the operator's next attempt resumes from the latest complete checkpoint.

Test-only hooks (never set by the operator; documented in docs/testing.md): ``KUBETUNE_TEST_HANG_RANK``
and ``KUBETUNE_TEST_HANG_AT_STEP`` make that rank sleep at the start of that step, as a stuck collective
would.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable

from transformers import TrainerCallback

from kubetune.api.v1alpha1 import TrainerConfig

from . import termination

log = logging.getLogger("kubetune_trainer.stall")

ENV_TEST_HANG_RANK = "KUBETUNE_TEST_HANG_RANK"  # test-only: this rank hangs...
ENV_TEST_HANG_AT_STEP = "KUBETUNE_TEST_HANG_AT_STEP"  # ...at the start of this (1-based) step


def stall_message(timeout: float, step: int, total: int) -> str:
    return (
        f"{termination.STALLED}: no training step finished for {timeout:.0f}s (training.stallTimeoutSeconds) after step "
        f"{step} of {total}; ending this attempt so that the next one resumes from the latest checkpoint"
    )


class Watchdog:
    """Calls ``on_stall(idle_seconds)`` once when ``beat`` was not called for ``timeout`` seconds."""

    def __init__(
        self,
        timeout: float,
        on_stall: Callable[[float], None],
        clock: Callable[[], float] = time.monotonic,
        poll: float | None = None,
    ) -> None:
        self.timeout = float(timeout)
        self.on_stall = on_stall
        self.clock = clock
        self.poll = poll if poll is not None else min(5.0, max(0.05, self.timeout / 10))
        self._last = clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        self._last = self.clock()

    def idle(self) -> float:
        return self.clock() - self._last

    def start(self) -> None:
        self.beat()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="kubetune-stall-watchdog", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.poll):
            idle = self.idle()
            if idle >= self.timeout:
                self.on_stall(idle)
                return


def _rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


class StallCallback(TrainerCallback):
    """Runs a Watchdog from the start of training to its end; any step, save, evaluation or log beats it."""

    def __init__(self, config: TrainerConfig, exit: Callable[[int], None] = os._exit) -> None:
        self.config = config
        self.timeout = config.job.spec.training.stall_timeout_seconds
        self.exit = exit
        self.step = 0
        self.total = 0
        # Every rank of a stuck collective goes idle at the same moment; rank 0 reports the stall, so the
        # others wait a little longer: otherwise one of them may exit first and rank 0 dies of the broken
        # connection before it can say why.
        grace = 0.0 if _rank() == 0 else min(60.0, max(5.0, 0.1 * self.timeout))
        self.watchdog = Watchdog(self.timeout + grace, self._stalled)

    def _stalled(self, idle: float) -> None:
        from . import reporting

        message = stall_message(self.timeout, self.step, self.total)
        log.error("%s (rank %d, idle %.0fs)", message, _rank(), idle)
        termination.write(message)
        try:
            reporting.report_stalled(self.config, termination.STALLED, message)  # rank 0 only
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            # The main thread is stuck (often inside a collective): only ending the process frees it.
            self.exit(termination.STALLED_EXIT_CODE)

    def _beat(self, state) -> None:
        self.step = int(state.global_step or 0)
        self.total = int(state.max_steps or 0)
        self.watchdog.beat()

    def on_train_begin(self, args, state, control, **kwargs):
        self._beat(state)
        self.watchdog.start()
        return control

    def on_step_end(self, args, state, control, **kwargs):
        self._beat(state)
        return control

    on_save = on_evaluate = on_log = on_step_end

    def on_train_end(self, args, state, control, **kwargs):
        self.watchdog.stop()
        return control


class HangForTests(TrainerCallback):
    """Test-only (KUBETUNE_TEST_HANG_RANK / _AT_STEP): this rank sleeps at the start of a step."""

    def __init__(self, rank: int, step: int) -> None:
        self.rank = rank
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if _rank() == self.rank and int(state.global_step) + 1 == self.step:
            log.warning(
                "test hook %s=%d: rank %d hangs in step %d",
                ENV_TEST_HANG_RANK,
                self.rank,
                self.rank,
                self.step,
            )
            while True:
                time.sleep(3600)
        return control


def callbacks(config: TrainerConfig) -> list[TrainerCallback]:
    """The stall watchdog, plus the test-only hang when its env vars are set."""
    found: list[TrainerCallback] = [StallCallback(config)]
    rank, step = os.environ.get(ENV_TEST_HANG_RANK), os.environ.get(ENV_TEST_HANG_AT_STEP)
    if rank and step:
        found.append(HangForTests(int(rank), int(step)))
    return found
