"""Checkpoints: every N steps and on SIGTERM, a completion marker per checkpoint, resume from the latest one.

A checkpoint is ``<output_dir>/checkpoints/checkpoint-STEP`` as HF's Trainer writes it (model, optimizer,
scheduler, RNG state, trainer state). It counts as complete only when ``kubetune-checkpoint.json`` (written
after the Trainer finished saving) exists and names this run's id; anything else is never resumed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from transformers import TrainerCallback

from . import world

log = logging.getLogger("kubetune_trainer.checkpoints")

MARKER = "kubetune-checkpoint.json"
_STEP = re.compile(r"^checkpoint-(\d+)$")
T = TypeVar("T")


def checkpoint_dir(output_dir: str) -> Path:
    return Path(output_dir) / "checkpoints"


def read_marker(path: Path) -> dict | None:
    try:
        return json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None


def step_of(name: str) -> int | None:
    """STEP of a ``checkpoint-STEP`` folder name, else None."""
    m = _STEP.match(name)
    return int(m.group(1)) if m else None


def is_complete(marker: dict | None, run_id: str) -> bool:
    if not marker:
        return False
    return marker.get("runId") == run_id


def newest_complete(
    found: Iterable[tuple[int, T]], marker_of: Callable[[T], dict | None], run_id: str
) -> T | None:
    """The newest of (step, checkpoint) whose marker says it is complete and this run's; local and remote alike."""
    for _, item in sorted(found, key=lambda pair: pair[0], reverse=True):
        if is_complete(marker_of(item), run_id):
            return item
    return None


def beyond_keep(
    found: Iterable[tuple[int, T]], marker_of: Callable[[T], dict | None], run_id: str, keep_last: int
) -> list[T]:
    """Everything but the newest `keep_last` complete checkpoints of this run (older, incomplete, foreign)."""
    kept = 0
    drop = []
    for _, item in sorted(found, key=lambda pair: pair[0], reverse=True):
        if kept < keep_last and is_complete(marker_of(item), run_id):
            kept += 1
        else:
            drop.append(item)
    return drop


def checkpoints(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    found = [(step, p) for p in root.iterdir() if p.is_dir() and (step := step_of(p.name)) is not None]
    return sorted(found)


def latest_complete(output_dir: str, run_id: str) -> Path | None:
    """The newest checkpoint of this run with a completion marker."""
    return newest_complete(checkpoints(checkpoint_dir(output_dir)), read_marker, run_id)


def clean_foreign(output_dir: str, run_id: str) -> list[Path]:
    """Remove checkpoints that are incomplete or belong to another run (a changed spec starts from scratch)."""
    removed = []
    for _, path in checkpoints(checkpoint_dir(output_dir)):
        marker = read_marker(path)
        if not is_complete(marker, run_id):
            why = "incomplete" if not marker else f"from run {marker.get('runId')}"
            log.warning("removing checkpoint %s (%s)", path, why)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


class StopFlag:
    """Set by SIGTERM (or by hand in tests); the callback turns it into save-and-stop at the next step end."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signum: int | None = None

    def set(self, signum: int | None = None) -> None:
        self.signum = signum
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()


def install_sigterm(flag: StopFlag) -> Callable[[], None]:
    """Route SIGTERM to the flag (the main thread only); returns a function that restores the old handler."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum, frame):  # noqa: ARG001
        log.warning("SIGTERM: saving a checkpoint at the end of this step, then stopping")
        flag.set(signum)

    signal.signal(signal.SIGTERM, handler)

    def restore() -> None:
        signal.signal(signal.SIGTERM, previous)

    return restore


class CheckpointCallback(TrainerCallback):
    """Saves every `every_steps` and on the stop flag; marks each finished checkpoint complete."""

    def __init__(
        self,
        run_id: str,
        every_steps: int,
        flag: StopFlag,
        on_checkpoint: Callable[[str, int], None] | None = None,
    ):
        self.run_id = run_id
        self.every_steps = every_steps
        self.flag = flag
        self.on_checkpoint = on_checkpoint
        self.stopped_at: int | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if self.every_steps and state.global_step % self.every_steps == 0:
            control.should_save = True
        # Every rank stops at the same step, also when the signal reached only some of them yet.
        if world.agree(self.flag.is_set(), args.device):
            if not self.flag.is_set():
                log.warning(
                    "another rank got SIGTERM: saving a checkpoint at the end of this step, then stopping"
                )
                self.flag.set()
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step
        return control

    def on_save(self, args, state, control, **kwargs):
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        world.barrier()  # every rank has written its part (RNG state, FSDP shards) before the marker says so
        if state.is_world_process_zero and path.is_dir():
            marker = {
                "runId": self.run_id,
                "step": state.global_step,
                "savedAt": datetime.now(UTC).isoformat(),
            }
            tmp = path / (MARKER + ".tmp")
            tmp.write_text(json.dumps(marker))
            os.replace(tmp, path / MARKER)
            if self.on_checkpoint is not None:
                self.on_checkpoint(str(path), state.global_step)
        return control
