"""spec.evaluation on real CPU runs with a tiny Llama: a run that improves perplexity passes its gate and is
promoted in place; a run trained to be worse (a learning rate that diverges) fails it, is kept under
rejected/RUN_ID and marked not promoted, with both numbers in the verdict; an lm-evaluation-harness task
defined locally (task YAML + JSONL) runs on the result and its score can be gated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetune_trainer.train import run_training

from .toy import CAPITALS, job_config

pytestmark = pytest.mark.trainer

GATED = {
    "metrics": ["perplexity"],
    "compareWithBase": True,
    "gates": [{"metric": "perplexity", "minImprovement": 0.05}],
}


def result_dir(outcome) -> Path:
    return Path(outcome.result["uri"][len("file://") :])


def test_a_result_that_improves_perplexity_passes_and_is_promoted(assets, datasets_dir, tmp_path):
    config = job_config(tmp_path, assets["llama"], datasets_dir / "text.jsonl",
                        dataset={"evalFraction": 0.25}, training={"maxSteps": 24}, evaluation=GATED)  # fmt: skip
    outcome = run_training(config)
    out = Path(config.runtime.output_dir)
    assert outcome.result["promoted"] is True
    assert result_dir(outcome) == out  # promoted: in place
    lineage = json.loads((out / "lineage.json").read_text())
    evaluation = lineage["evaluation"]
    assert evaluation["passed"] is True and evaluation["configHash"] == config.runtime.run_id
    [metric] = evaluation["metrics"]
    assert metric["name"] == "perplexity" and metric["result"] < 0.95 * metric["base"]
    [gate] = evaluation["gates"]
    assert gate["passed"] is True
    assert f"perplexity {metric['result']:.4g} (base {metric['base']:.4g})" in gate["message"]
    assert "better than the base by " in gate["message"]
    assert "meeting the required improvement of 5.0%" in gate["message"]


def test_a_diverging_run_fails_its_gate_and_keeps_the_promoted_result(assets, datasets_dir, tmp_path):
    good = job_config(tmp_path, assets["llama"], datasets_dir / "text.jsonl",
                      dataset={"evalFraction": 0.25}, training={"maxSteps": 24}, evaluation=GATED)  # fmt: skip
    run_training(good)
    out = Path(good.runtime.output_dir)
    promoted = (out / "adapter_model.safetensors").read_bytes()
    # the same job at a learning rate that diverges (full fine-tuning, lr 1): a new run in the same output
    bad = job_config(tmp_path, assets["llama"], datasets_dir / "text.jsonl", dataset={"evalFraction": 0.25},
                     method={"type": "full"}, training={"maxSteps": 8, "learningRate": 1.0},
                     evaluation={**GATED, "gates": [{"metric": "perplexity", "maxRegression": 0.0}]})  # fmt: skip
    outcome = run_training(bad)
    assert outcome.result["promoted"] is False
    rejected = out / "rejected" / bad.runtime.run_id
    assert result_dir(outcome) == rejected
    assert (rejected / "model.safetensors").exists() and (rejected / "_SUCCESS").exists()
    assert (out / "adapter_model.safetensors").read_bytes() == promoted  # the promoted result is untouched
    evaluation = json.loads((rejected / "lineage.json").read_text())["evaluation"]
    assert evaluation["passed"] is False
    [metric] = evaluation["metrics"]
    assert metric["result"] > metric["base"]
    [gate] = evaluation["gates"]
    assert gate["passed"] is False
    assert gate["message"].startswith(
        f"perplexity {metric['result']:.4g} (base {metric['base']:.4g}): worse than the base by "
    )
    assert "beyond the allowed regression of 0.0%" in gate["message"]
    assert evaluation["message"].startswith("failed perplexity ")


def write_lm_eval_task(folder: Path) -> None:
    """A multiple-choice task over the toy capitals, defined locally: the right capital against two others."""
    folder.mkdir()
    names = [k for _, k in CAPITALS]
    rows = [{"country": c, "choices": [f" {k}", f" {names[(i + 1) % 8]}", f" {names[(i + 3) % 8]}"], "answer": 0}
            for i, (c, k) in enumerate(CAPITALS)]  # fmt: skip
    (folder / "capitals.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "capitals.yaml").write_text(
        "task: toy_capitals\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n  data_files:\n    test: capitals.jsonl\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "The capital of {{country}} is"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{answer}}"\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )


def test_a_local_lm_eval_task_runs_on_the_result_and_gates_it(assets, datasets_dir, tmp_path):
    tasks = tmp_path / "tasks"
    write_lm_eval_task(tasks)
    evaluation = {
        "lmEval": {"tasks": ["toy_capitals"], "taskDir": f"file://{tasks}"},
        "compareWithBase": True,
        "gates": [{"metric": "toy_capitals/acc", "min": 0.5, "maxRegression": 0.0}],
    }
    config = job_config(tmp_path, assets["llama"], datasets_dir / "capitals.jsonl",
                        training={"maxSteps": 60, "learningRate": 1e-2}, evaluation=evaluation)  # fmt: skip
    outcome = run_training(config)
    lineage = json.loads((result_dir(outcome) / "lineage.json").read_text())["evaluation"]
    [metric] = lineage["metrics"]
    assert metric["name"] == "toy_capitals/acc"
    assert 0.0 <= metric["base"] <= 1.0 and 0.0 <= metric["result"] <= 1.0
    # the model learned the capitals: it picks the right one
    assert (
        metric["result"] >= 0.5 and metric["result"] > metric["base"]
    )  # it learned the capitals (chance: 1/3)
    assert lineage["passed"] is True and outcome.result["promoted"] is True


def test_kubetune_eval_judges_an_existing_result(assets, datasets_dir, tmp_path, capsys):
    import yaml

    from kubetune import cli

    out = tmp_path / "result"
    job = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "capitals"},
        "spec": {
            "model": {"uri": f"file://{assets['llama']}"},
            "dataset": {
                "uri": f"file://{datasets_dir / 'text.jsonl'}",
                "evalFraction": 0.25,
                "maxLength": 48,
            },
            "method": {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
            "training": {"maxSteps": 24, "learningRate": 5e-3, "batchSize": 8},
            "resources": {"gpusPerNode": 0},
            "output": {"uri": f"file://{out}"},
            "evaluation": GATED,
        },
    }
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump(job))
    with pytest.raises(SystemExit) as trained:
        cli.main(["train", "-f", str(manifest), "--local"])
    assert trained.value.code == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as evaluated:
        cli.main(["eval", "-f", str(manifest), "--local"])
    printed = capsys.readouterr().out
    assert evaluated.value.code == 0, printed
    report = json.loads(printed.strip().splitlines()[-1])["evaluation"]
    trained_with = json.loads((out / "lineage.json").read_text())["evaluation"]
    # the same data and model: the same figures as the evaluation after training
    assert report["metrics"][0]["result"] == pytest.approx(trained_with["metrics"][0]["result"], rel=1e-4)
    assert report["metrics"][0]["base"] == pytest.approx(trained_with["metrics"][0]["base"], rel=1e-4)
    assert "gate perplexity: passed: perplexity " in printed
    # a gate the result cannot pass: exit 1, saying so
    job["spec"]["evaluation"] = {**GATED, "gates": [{"metric": "perplexity", "max": 1.0}]}
    manifest.write_text(yaml.safe_dump(job))
    with pytest.raises(SystemExit) as failed:
        cli.main(["eval", "-f", str(manifest), "--local", "--result", str(out)])
    assert failed.value.code == 1
    assert "above the maximum 1" in capsys.readouterr().out
