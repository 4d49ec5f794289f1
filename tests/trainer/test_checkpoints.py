"""Checkpoints: SIGTERM mid-run saves and stops (in a real subprocess), the restart resumes at the saved step;
incomplete or foreign checkpoints are never resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from transformers import TrainerCallback

from kubetune_trainer import checkpoints
from kubetune_trainer.config import load_manifest, local_config
from kubetune_trainer.train import run_training
from tests.support.waiting import process_exited, wait_for

pytestmark = pytest.mark.trainer
REPO = Path(__file__).resolve().parents[2]


def make_checkpoint(root: Path, step: int, run_id: str | None) -> Path:
    path = root / "checkpoints" / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text("{}")
    if run_id is not None:
        (path / checkpoints.MARKER).write_text(json.dumps({"runId": run_id, "step": step}))
    return path


def test_latest_complete_skips_incomplete_and_foreign(tmp_path):
    make_checkpoint(tmp_path, 10, "run-a")
    make_checkpoint(tmp_path, 20, "run-a")
    make_checkpoint(tmp_path, 30, None)  # killed while saving
    make_checkpoint(tmp_path, 40, "run-b")  # another spec
    assert checkpoints.latest_complete(str(tmp_path), "run-a").name == "checkpoint-20"
    assert checkpoints.latest_complete(str(tmp_path), "run-c") is None
    removed = checkpoints.clean_foreign(str(tmp_path), "run-a")
    assert sorted(p.name for p in removed) == ["checkpoint-30", "checkpoint-40"]
    assert [p.name for _, p in checkpoints.checkpoints(tmp_path / "checkpoints")] == [
        "checkpoint-10",
        "checkpoint-20",
    ]


class FirstStep(TrainerCallback):
    def __init__(self):
        self.first_step = None

    def on_step_end(self, args, state, control, **kwargs):
        if self.first_step is None:
            self.first_step = state.global_step


def test_sigterm_saves_then_restart_resumes(assets, datasets_dir, tmp_path):
    manifest = tmp_path / "job.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kubetune.io/v1alpha1",
                "kind": "FineTuneJob",
                "metadata": {"name": "preempt"},
                "spec": {
                    "model": {"uri": f"file://{assets['llama']}"},
                    "dataset": {"uri": f"file://{datasets_dir / 'capitals.jsonl'}", "maxLength": 32},
                    "method": {"type": "lora", "lora": {"r": 4}},
                    "training": {"maxSteps": 120, "learningRate": 1e-3, "batchSize": 4},
                    "checkpoints": {"everySteps": 20, "keepLast": 2},
                },
            }
        )
    )
    out = tmp_path / "out"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "operator"), str(REPO / "trainer_image")]),
        "HF_HUB_OFFLINE": "1",
    }
    code = "import sys; from kubetune_trainer.local import run_local; sys.exit(run_local(sys.argv[1], sys.argv[2]))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(manifest), str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(
            (out / "checkpoints" / "checkpoint-20" / checkpoints.MARKER).exists, 240, 0.05, "checkpoint 20",
            fail_if=process_exited(proc, "the trainer", proc.stdout.read),
        )  # fmt: skip
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, output
    assert "SIGTERM" in output
    assert not (out / "_SUCCESS").exists()

    config = local_config(load_manifest(str(manifest)), str(out))
    saved = checkpoints.latest_complete(str(out), config.runtime.run_id)
    assert saved is not None
    step = int(saved.name.split("-")[1])
    assert step >= 20
    assert json.loads((saved / "trainer_state.json").read_text())["global_step"] == step
    assert (saved / "optimizer.pt").exists() and (saved / "scheduler.pt").exists()
    assert list(saved.glob("rng_state*.pth"))

    probe = FirstStep()
    outcome = run_training(config, extra_callbacks=[probe])
    assert probe.first_step == step + 1  # resumed, not restarted
    assert outcome.trainer.state.global_step == 120
    assert (out / "_SUCCESS").exists()
