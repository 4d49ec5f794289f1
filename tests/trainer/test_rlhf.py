"""Real preference and RL training on CPU with the tiny Llama: a reward model learns which answer is preferred,
GRPO and RLOO raise a reachable reward, KTO's loss falls, and the seed's RLHF pipeline (SFT -> reward model ->
GRPO with that reward model) runs as a chain the way the operator resolves it (runtime.chain)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from kubetune.api.v1alpha1 import ChainResolution, ParentResult, ResolvedModel
from kubetune_trainer.train import run_training

from .test_objectives import missing_metrics
from .toy import CAPITALS, NEGATIVE, POSITIVE, job_config, logged_losses, write_jsonl

pytestmark = pytest.mark.trainer

CAPITAL_NAMES = "|".join(k for _, k in CAPITALS)


def reviews(n: int = 96, seed: int = 0) -> list[dict]:
    """Preference pairs whose preferred answer is learnable: positive words beat negative ones."""
    rng = random.Random(seed)
    return [
        {
            "prompt": "The movie was",
            "chosen": " " + " ".join(rng.choices(POSITIVE, k=3)),
            "rejected": " " + " ".join(rng.choices(NEGATIVE, k=3)),
        }
        for _ in range(n)
    ]


def unpaired(repeat: int = 4) -> list[dict]:
    rows = []
    for i, (country, capital) in enumerate(CAPITALS):
        wrong = CAPITALS[(i + 1) % len(CAPITALS)][1]
        rows.append({"prompt": f"The capital of {country} is", "completion": f" {capital}", "label": True})
        rows.append({"prompt": f"The capital of {country} is", "completion": f" {wrong}", "label": False})
    return rows * repeat


def prompts(repeat: int = 4) -> list[dict]:
    return [{"prompt": f"The capital of {country} is"} for country, _ in CAPITALS] * repeat


@pytest.fixture(scope="module")
def rl_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rl-data")
    write_jsonl(root / "reviews.jsonl", reviews())
    write_jsonl(root / "unpaired.jsonl", unpaired())
    write_jsonl(root / "prompts.jsonl", prompts())
    write_jsonl(root / "review-prompts.jsonl", [{"prompt": "The movie was"}] * 16)
    return root


def rewards_logged(trainer) -> list[float]:
    return [entry["reward"] for entry in trainer.state.log_history if "reward" in entry]


def rl_objective(kind: str, rewards: list[dict], **rl) -> dict:
    settings = {"numGenerations": 8, "maxCompletionLength": 6, "temperature": 1.0, **rl}
    return {"type": kind, "rl": {"rewards": rewards, **settings}}


# ---------------------------------------------------------------- reward model


@pytest.fixture(scope="module")
def reward_run(assets, rl_data, tmp_path_factory):
    config = job_config(
        tmp_path_factory.mktemp("rm"),
        assets["llama"],
        rl_data / "reviews.jsonl",
        name="rm",
        model={"task": "sequence-classification"},
        dataset={"format": "preference", "evalFraction": 0.25},
        objective={"type": "reward"},
        training={"maxSteps": 20, "learningRate": 5e-3},
    )
    return config, run_training(config)


def test_reward_model_learns_which_answer_is_preferred(reward_run):
    config, outcome = reward_run
    first = next(e["accuracy"] for e in outcome.trainer.state.log_history if "accuracy" in e)
    accuracy = outcome.metrics["eval_accuracy"]
    assert accuracy >= 0.9 and accuracy > first, (first, accuracy)  # chosen scored above rejected
    assert outcome.result["kind"] == "reward-model"
    assert outcome.result["metrics"]["eval_accuracy"] == accuracy
    model = outcome.model
    assert model.config.num_labels == 1  # one output: the reward
    out = Path(outcome.result["uri"].removeprefix("file://"))
    assert (out / "adapter_config.json").exists()  # LoRA on the classifier (the score head saved with it)
    assert json.loads((out / "lineage.json").read_text())["resultKind"] == "reward-model"
    assert not missing_metrics(outcome.trainer, "reward")


def test_a_reward_model_without_model_task_is_a_one_output_classifier(assets, rl_data, tmp_path):
    """objective reward on a model whose task is left out: the API implies sequence-classification, the
    objective one output."""
    config = job_config(
        tmp_path, assets["llama"], rl_data / "reviews.jsonl", dataset={"format": "preference"},
        objective={"type": "reward"}, training={"maxSteps": 2},
    )  # fmt: skip
    assert config.job.spec.model.task == "sequence-classification"
    outcome = run_training(config)
    assert type(outcome.model.base_model.model).__name__ == "LlamaForSequenceClassification"
    assert outcome.model.config.num_labels == 1 and outcome.result["kind"] == "reward-model"


# ---------------------------------------------------------------- GRPO / RLOO with a built-in reward function


@pytest.mark.parametrize("kind", ["grpo", "rloo"])
def test_online_rl_raises_a_reachable_reward(assets, rl_data, tmp_path, kind):
    config = job_config(
        tmp_path,
        assets["llama"],
        rl_data / "prompts.jsonl",
        dataset={"format": "prompt"},
        method={"type": "full"},
        objective=rl_objective(
            kind, [{"function": {"name": "regex-match", "args": {"pattern": CAPITAL_NAMES}}}]
        ),
        training={"maxSteps": 14, "learningRate": 2e-2},
    )
    outcome = run_training(config)
    rewards = rewards_logged(outcome.trainer)
    assert len(rewards) == 14, rewards
    start, end = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert end > start + 0.3 and end >= 0.6, f"{kind}: mean reward {start:.2f} -> {end:.2f} ({rewards})"
    logged = {k for e in outcome.trainer.state.log_history for k in e}
    assert {"reward", "reward_std", "rewards/regex_match/mean"} <= logged
    assert outcome.result["kind"] == "full"
    assert not missing_metrics(outcome.trainer, kind)


def test_rl_reports_reward_and_kl_to_the_progress(assets, rl_data, tmp_path):
    from kubetune_trainer.reporting import ReportingCallback, progress_line

    config = job_config(
        tmp_path,
        assets["llama"],
        rl_data / "prompts.jsonl",
        dataset={"format": "prompt"},
        objective=rl_objective(
            "grpo",
            [
                {"function": {"name": "length-target", "args": {"target": 3}}, "weight": 0.5},
                {"function": {"name": "repetition-penalty", "args": {"ngramSize": 2}}},
            ],
            beta=0.1,
        ),
        training={"maxSteps": 2},
    )
    reporter = ReportingCallback(config, interval=0)
    outcome = run_training(config, extra_callbacks=[reporter])
    progress = reporter.last_progress
    assert progress["reward"] is not None and progress["rewardStd"] is not None
    assert progress["kl"] is not None and progress["kl"] >= 0  # beta > 0: KL to the reference model
    assert "reward " in progress_line(progress) and "kl " in progress_line(progress)
    logged = {k for e in outcome.trainer.state.log_history for k in e}
    assert {"rewards/length_target/mean", "rewards/repetition_penalty_reward/mean", "kl"} <= logged


# ---------------------------------------------------------------- KTO


def test_kto_loss_falls_on_unpaired_preferences(assets, rl_data, tmp_path):
    config = job_config(
        tmp_path,
        assets["llama"],
        rl_data / "unpaired.jsonl",
        dataset={"format": "unpaired-preference"},
        objective={"type": "kto", "kto": {"beta": 0.5}},
        training={"maxSteps": 12, "learningRate": 1e-2},
    )
    outcome = run_training(config)
    losses = logged_losses(outcome.trainer)
    assert sum(losses[-3:]) / 3 < losses[0] - 0.02, losses
    margins = [e["rewards/margins"] for e in outcome.trainer.state.log_history if "rewards/margins" in e]
    assert margins[-1] > 0, margins  # desirable completions now score above undesirable ones
    assert outcome.result["kind"] == "adapter"
    assert not missing_metrics(outcome.trainer, "kto")


# ---------------------------------------------------------------- the seed's RLHF pipeline as a chain


def test_sft_then_reward_model_then_grpo_with_that_reward_model(assets, rl_data, datasets_dir, tmp_path):
    """SFT (LoRA) -> reward model (LoRA, from the SFT result) -> GRPO (from the SFT result, rewarded by the
    reward model), each starting from the previous result as the operator resolves it into runtime.chain."""
    llama = f"file://{assets['llama']}"
    sft = job_config(
        tmp_path, assets["llama"], datasets_dir / "capitals.jsonl", name="sft", out_name="sft",
        training={"maxSteps": 6},
    )  # fmt: skip
    sft_result = run_training(sft).result
    assert sft_result["kind"] == "adapter"
    sft_model = ResolvedModel(uri=llama, adapters=[sft_result["uri"]])  # the adapter merged into its base
    sft_parent = ParentResult(
        name="sft", uri=sft_result["uri"], digest=sft_result["configHash"], role="model"
    )

    rm = job_config(
        tmp_path, assets["llama"], rl_data / "reviews.jsonl", name="rm", out_name="rm",
        model={"uri": None, "fineTuneJobRef": {"name": "sft"}, "task": "sequence-classification"},
        dataset={"format": "preference", "evalFraction": 0.25},
        objective={"type": "reward"}, training={"maxSteps": 10, "learningRate": 5e-3},
    )  # fmt: skip
    rm.runtime.chain = ChainResolution(model=sft_model, parents=[sft_parent])
    rm_outcome = run_training(rm)
    assert rm_outcome.result["kind"] == "reward-model" and rm_outcome.metrics["eval_accuracy"] >= 0.9
    assert [p["name"] for p in rm_outcome.result["parents"]] == ["sft"]

    grpo = job_config(
        tmp_path, assets["llama"], rl_data / "review-prompts.jsonl", name="grpo", out_name="grpo",
        model={"uri": None, "fineTuneJobRef": {"name": "sft"}},
        dataset={"format": "prompt"},
        objective=rl_objective("grpo", [{"model": {"fineTuneJobRef": {"name": "rm"}}}]),
        training={"maxSteps": 3},
    )  # fmt: skip
    rm_parent = ParentResult(name="rm", uri=rm_outcome.result["uri"], role="reward-model")
    grpo.runtime.chain = ChainResolution(
        model=sft_model,
        reward_models={
            "rm": ResolvedModel(uri=llama, adapters=[sft_result["uri"], rm_outcome.result["uri"]])
        },
        parents=[sft_parent, rm_parent],
    )
    outcome = run_training(grpo)
    rewards = rewards_logged(outcome.trainer)
    assert len(rewards) == 3 and all(isinstance(r, float) for r in rewards), rewards
    # The rewards came from the reward model the rm stage trained: GRPO's reward function scores texts as the
    # rm stage's own model does (a reward model made from the base, or without the rm adapter, would not).
    (reward_model,) = outcome.trainer.reward_funcs
    (reward_tokenizer,) = outcome.trainer.reward_processing_classes
    probe = reward_tokenizer(
        ["The film was wonderful, I loved every minute.", "Dull, far too long, I walked out."],
        return_tensors="pt", padding=True,
    )  # fmt: skip
    with torch.no_grad():
        used = reward_model.eval()(**probe).logits
        trained = rm_outcome.model.eval()(**probe).logits
    torch.testing.assert_close(used, trained, atol=1e-4, rtol=1e-4)
    assert any(k.startswith("rewards/") for e in outcome.trainer.state.log_history for k in e)
    lineage = json.loads((Path(grpo.runtime.output_dir) / "lineage.json").read_text())
    assert [p["name"] for p in lineage["parents"]] == ["sft", "rm"]
    assert lineage["baseModel"]["fineTuneJobRef"] == "sft"
    assert lineage["baseModel"]["mergedAdapters"] == [sft_result["uri"]]
    assert [p["name"] for p in outcome.result["parents"]] == ["sft", "rm"]


def test_a_chained_job_without_a_resolution_says_so(assets, datasets_dir, tmp_path):
    from kubetune_trainer.errors import ConfigError

    config = job_config(
        tmp_path, assets["llama"], datasets_dir / "capitals.jsonl", model={"uri": None, "fineTuneJobRef": {"name": "x"}}
    )  # fmt: skip
    with pytest.raises(ConfigError, match="fineTuneJobRef 'x' was not resolved"):
        run_training(config)


# ---------------------------------------------------------------- kubetune train -f FILE --local


LOCAL_CASES = {
    "reward": ("reviews.jsonl", {"format": "preference"}, {"type": "reward"}, "sequence-classification"),
    "kto": ("unpaired.jsonl", {"format": "unpaired-preference"}, {"type": "kto"}, "causal-lm"),
    "grpo": ("prompts.jsonl", {"format": "prompt"}, rl_objective("grpo", [{"function": {"name": "think-format"}}]), "causal-lm"),
    "rloo": ("prompts.jsonl", {}, rl_objective("rloo", [{"function": {"name": "regex-match", "args": {"pattern": "a"}}}]), "causal-lm"),
}  # fmt: skip


@pytest.mark.parametrize("kind", list(LOCAL_CASES))
def test_kubetune_train_local_runs_each_new_objective(assets, rl_data, tmp_path, capsys, kind):
    """grpo through the `kubetune` command itself; the others through the function it calls (run_local), which
    saves a Python start-up per objective."""
    data, dataset, objective, task = LOCAL_CASES[kind]
    manifest = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": f"local-{kind}"},
        "spec": {
            "model": {"uri": f"file://{assets['llama']}", "task": task},
            "dataset": {"uri": f"file://{rl_data / data}", "maxLength": 32, **dataset},
            "method": {"type": "lora", "lora": {"r": 4, "alpha": 8}},
            "objective": objective,
            "training": {"maxSteps": 2, "batchSize": 8},
        },
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(manifest))
    out = tmp_path / "out"
    if kind == "grpo":
        command = [
            sys.executable,
            "-m",
            "kubetune.cli",
            "train",
            "-f",
            str(path),
            "--local",
            "--output",
            str(out),
        ]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
        code, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    else:
        from kubetune_trainer.local import run_local

        code = run_local(str(path), str(out))
        stdout, stderr = capsys.readouterr()
    assert code == 0, stdout[-3000:] + stderr[-3000:]
    marker = json.loads((out / "_SUCCESS").read_text())
    assert marker["kind"] == ("reward-model" if kind == "reward" else "adapter")
    assert "step 2/2" in stdout
    if kind in ("grpo", "rloo"):
        assert " reward " in stdout  # the console line carries the mean reward


# ---------------------------------------------------------------- checkpoints and resume


@pytest.mark.parametrize("kind", ["grpo", "kto"])
def test_preempted_rl_run_resumes_from_its_checkpoint(assets, rl_data, tmp_path, kind):
    from transformers import TrainerCallback

    from kubetune_trainer import checkpoints
    from kubetune_trainer.errors import Preempted

    from .test_checkpoints import FirstStep

    data, dataset, objective = {
        "grpo": ("prompts.jsonl", {"format": "prompt"}, rl_objective("grpo", [{"function": {"name": "length-target", "args": {"target": 3}}}])),
        "kto": ("unpaired.jsonl", {"format": "unpaired-preference"}, {"type": "kto"}),
    }[kind]  # fmt: skip
    config = job_config(
        tmp_path, assets["llama"], rl_data / data, dataset=dataset, objective=objective,
        training={"maxSteps": 4}, checkpoints={"everySteps": 2, "keepLast": 2},
    )  # fmt: skip
    flag = checkpoints.StopFlag()

    class StopAtTwo(TrainerCallback):  # what SIGTERM does, at a known step
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 2:
                flag.set()

    with pytest.raises(Preempted):
        run_training(config, stop_flag=flag, extra_callbacks=[StopAtTwo()])
    saved = checkpoints.latest_complete(config.runtime.output_dir, config.runtime.run_id)
    assert saved is not None and saved.name == "checkpoint-3"
    probe = FirstStep()
    outcome = run_training(config, extra_callbacks=[probe])
    assert probe.first_step == 4 and outcome.trainer.state.global_step == 4  # resumed, not restarted
    assert Path(outcome.result["uri"].removeprefix("file://"), "_SUCCESS").exists()
