"""The fit check offline: `kubetune validate` and `kubetune train --dry-run` print the estimate; a job that
cannot fit on the GPU memory it is given (--gpu-memory, or resources.nodeSelector's GPU labels) is a problem
unless it sets resources.skipFitCheck."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetune.cli_fit import parse_memory

from .helpers import finetunejob
from .test_cli import run, write
from .test_fit import LLAMA_8B

LORA_8B = {"model": {"uri": "hf://meta-llama/Llama-3.1-8B"},
           "dataset": {"uri": "hf://yahma/alpaca-cleaned", "maxLength": 2048},
           "training": {"batchSize": 8}}  # fmt: skip


@pytest.fixture
def config(tmp_path) -> str:
    folder = tmp_path / "llama-8b"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA_8B))
    return str(folder)


def test_a_job_that_cannot_fit_is_a_problem_with_the_numbers(capsys, tmp_path, config):
    path = write(tmp_path, "job.yaml", finetunejob("big", **LORA_8B))
    code, out, err = run(capsys, "validate", "-f", path, "--model-config", config, "--gpu-memory", "24Gi")
    assert code == 1
    assert out.startswith(f"{path}: FineTuneJob/big: spec.resources: does not fit: needs ~")
    assert "GiB per GPU (weights 15.11, gradients 0.16, optimizer 0.31, activations " in out
    assert "24 GiB available (--gpu-memory): use batchSize 2 with gradient checkpointing" in out
    assert "1 object(s) checked, 1 with problems" in err


def test_skip_fit_check_keeps_the_estimate_but_not_the_problem(capsys, tmp_path, config):
    job = finetunejob("big", **LORA_8B, resources={"skipFitCheck": True})
    path = write(tmp_path, "job.yaml", job)
    code, out, err = run(capsys, "validate", "-f", path, "--model-config", config, "--gpu-memory", "24Gi")
    assert code == 0 and out == ""
    assert f"{path}: FineTuneJob/big: fit: needs ~" in err


def test_the_node_selector_says_the_gpu_memory(capsys, tmp_path, config):
    smaller = {**LORA_8B, "training": {"batchSize": 4, "gradientCheckpointing": True}}  # ~31 GiB
    h100 = finetunejob("h100", **smaller, resources={"nodeSelector": {"nvidia.com/gpu.memory": "81559"}})
    l4 = finetunejob("l4", **smaller, resources={"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-L4"}})
    code, out, err = run(
        capsys, "validate", "-f", write(tmp_path, "jobs.yaml", h100, l4), "--model-config", config
    )
    assert code == 1
    assert (
        "FineTuneJob/l4: spec.resources: does not fit:" in out
        and "22.49 GiB available (resources.nodeSelector)" in out
    )
    assert "FineTuneJob/h100: fit: needs ~" in err and "79.65 GiB available (resources.nodeSelector)" in err


def test_a_model_that_cannot_be_read_here_is_not_estimated(capsys, tmp_path):
    job = finetunejob("pvc", model={"uri": "pvc://models/llama"})
    code, out, err = run(capsys, "validate", "-f", write(tmp_path, "job.yaml", job), "--gpu-memory", "1Gi")
    assert code == 0 and out == ""
    assert (
        "fit: not estimated: pvc://models/llama: a pvc:// model's config.json is read where it is mounted"
        in err
    )


def test_cpu_runs_are_not_checked(capsys, tmp_path, config):
    job = finetunejob("cpu", **LORA_8B, resources={"gpusPerNode": 0})
    code, _, err = run(capsys, "validate", "-f", write(tmp_path, "job.yaml", job), "--model-config", config,
                       "--gpu-memory", "1Gi")  # fmt: skip
    assert code == 0 and "fit: not checked: the run trains on CPU" in err


def test_train_dry_run_prints_the_estimate_and_trains_nothing(capsys, tmp_path, config):
    path = write(tmp_path, "job.yaml", finetunejob("big", **LORA_8B))
    code, out, _ = run(capsys, "train", "-f", path, "--local", "--dry-run", "--model-config", config,
                       "--gpu-memory", "80Gi")  # fmt: skip
    assert code == 0
    lines = out.splitlines()
    assert (
        lines[0]
        == "FineTuneJob/big: causal-lm lora/sft of hf://meta-llama/Llama-3.1-8B on hf://yahma/alpaca-cleaned"
    )
    assert lines[2].startswith("  fit: needs ~") and "80 GiB available (--gpu-memory): use " in lines[2]
    assert lines[-1] == "dry run: nothing was trained"
    assert not (Path(tmp_path) / "output").exists()


@pytest.mark.parametrize(
    ("text", "size"), [("24Gi", 24 * 2**30), ("80G", 80 * 10**9), ("81559Mi", 81559 * 2**20)]
)
def test_parse_memory(text, size):
    assert parse_memory(text) == size


def test_a_bad_gpu_memory_is_refused(capsys, tmp_path):
    code, _, err = run(
        capsys, "validate", "-f", write(tmp_path, "job.yaml", finetunejob()), "--gpu-memory", "lots"
    )
    assert code == 2 and "'lots' is not a memory size" in err
