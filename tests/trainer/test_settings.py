"""Spec -> trainer settings without training: TrainingArguments mapping, extraArgs, early stopping, QLoRA's
BitsAndBytesConfig (no GPU here), PEFT configs, precision, the rendered config, and the entrypoints' errors."""

from __future__ import annotations

import pytest
import torch
import yaml

from kubetune.api.v1alpha1 import FineTuneJob
from kubetune_trainer import methods, objectives
from kubetune_trainer.config import load_config
from kubetune_trainer.errors import ConfigError
from kubetune_trainer.model import resolve_precision

pytestmark = pytest.mark.trainer


def spec(**sections):
    body = {
        "model": {"uri": "hf://org/m"},
        "dataset": {"uri": "hf://org/d"},
        "output": {"uri": "pvc://models/x"},
    }
    body.update(sections)
    doc = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "x"},
        "spec": body,
    }
    return FineTuneJob.model_validate(doc).spec


def build(s, has_eval=True):
    kwargs = objectives.training_arguments(s, "/tmp/kt-args", "fp32", has_eval=has_eval, use_cpu=True)
    return objectives.build_args(s, kwargs)


def test_training_settings_map_to_training_arguments():
    s = spec(
        training={
            "epochs": 2,
            "learningRate": 1e-4,
            "batchSize": 4,
            "gradientAccumulationSteps": 2,
            "scheduler": "constant-with-warmup",
            "warmupSteps": 7,
            "weightDecay": 0.01,
            "optimizer": "adafactor",
            "maxGradNorm": 0.5,
            "seed": 3,
            "evalEvery": 25,
        },
        checkpoints={"everySteps": 50, "keepLast": 3},
        dataset={"uri": "hf://org/d", "evalFraction": 0.1},
    )
    args = build(s)
    assert type(args).__name__ == "SFTConfig"
    assert (args.num_train_epochs, args.learning_rate, args.per_device_train_batch_size) == (2, 1e-4, 4)
    assert args.gradient_accumulation_steps == 2 and args.warmup_steps == 7 and args.weight_decay == 0.01
    assert args.lr_scheduler_type.value == "constant_with_warmup" and args.optim.value == "adafactor"
    assert args.max_grad_norm == 0.5 and args.seed == 3
    assert args.eval_strategy.value == "steps" and args.eval_steps == 25
    assert args.save_steps == 50 and args.save_total_limit == 3
    assert args.report_to == [] and args.bf16 is False and args.gradient_checkpointing is False


def test_extra_args_are_merged_and_unknown_ones_named():
    args = build(
        spec(training={"extraArgs": {"logging_steps": 3, "label_smoothing_factor": 0.1}}), has_eval=False
    )
    assert args.logging_steps == 3 and args.label_smoothing_factor == 0.1
    with pytest.raises(ConfigError, match="not_an_arg"):
        build(spec(training={"extraArgs": {"not_an_arg": 1}}), has_eval=False)


def test_early_stopping_loads_the_best_model():
    s = spec(
        dataset={"uri": "hf://org/d", "evalSplit": "validation"},
        training={
            "evalEvery": 10,
            "earlyStopping": {"patience": 2, "metric": "eval_accuracy", "greaterIsBetter": True},
        },
        model={"uri": "hf://org/m", "task": "sequence-classification", "numLabels": 2},
        checkpoints={"everySteps": 25},
    )
    args = build(s)
    assert type(args).__name__ == "TrainingArguments"
    assert (
        args.load_best_model_at_end
        and args.metric_for_best_model == "eval_accuracy"
        and args.greater_is_better
    )
    assert args.save_steps == 10  # saves must line up with evaluations
    [callback] = objectives.early_stopping_callbacks(s)
    assert callback.early_stopping_patience == 2


def test_dpo_and_seq2seq_argument_classes():
    dpo = build(
        spec(
            dataset={"uri": "hf://org/d", "format": "preference"},
            objective={"type": "dpo", "dpo": {"beta": 0.3}},
        ),
        has_eval=False,
    )
    assert type(dpo).__name__ == "DPOConfig" and dpo.beta == 0.3
    s2s = build(
        spec(
            model={"uri": "hf://org/m", "task": "seq2seq"},
            dataset={"uri": "hf://org/d", "evalFraction": 0.1},
            training={"metrics": ["rouge"]},
        )
    )
    assert type(s2s).__name__ == "Seq2SeqTrainingArguments" and s2s.predict_with_generate


def test_8bit_optimizers_need_a_gpu():
    with pytest.raises(ConfigError, match="needs a GPU"):
        build(spec(training={"optimizer": "paged-adamw-8bit"}), has_eval=False)
    assert objectives.OPTIMIZERS["adamw-8bit"] == "adamw_bnb_8bit"


@pytest.mark.parametrize(
    ("quant", "expected"),
    [
        (
            {"bits": 4, "type": "nf4", "doubleQuant": True, "computeDtype": "bfloat16"},
            {
                "load_in_4bit": True,
                "bnb_4bit_quant_type": "nf4",
                "bnb_4bit_use_double_quant": True,
                "bnb_4bit_compute_dtype": torch.bfloat16,
            },
        ),
        (
            {"bits": 4, "type": "fp4", "doubleQuant": False, "computeDtype": "float16"},
            {
                "load_in_4bit": True,
                "bnb_4bit_quant_type": "fp4",
                "bnb_4bit_use_double_quant": False,
                "bnb_4bit_compute_dtype": torch.float16,
            },
        ),
        ({"bits": 8}, {"load_in_8bit": True, "load_in_4bit": False}),
    ],
)
def test_qlora_bits_and_bytes_config(quant, expected):
    s = spec(
        method={
            "type": "qlora",
            "quantization": quant,
            "lora": {"r": 64, "alpha": 16, "targetModules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
        }
    )
    config = methods.bnb_config(s.method)
    for key, value in expected.items():
        assert getattr(config, key) == value, key
    lora = methods.lora_config(s.method, "causal-lm")
    assert (
        lora.r == 64
        and lora.lora_alpha == 16
        and set(lora.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    )


def test_peft_configs_per_method():
    s = spec(model={"uri": "hf://org/m", "task": "sequence-classification", "numLabels": 3})
    lora = methods.peft_config(s.method, s.model)
    assert lora.task_type == "SEQ_CLS" and lora.target_modules == "all-linear" and lora.exclude_modules
    prompt = spec(
        method={"type": "prompt-tuning", "promptTuning": {"numVirtualTokens": 5, "initText": "Answer:"}}
    )
    config = methods.peft_config(prompt.method, prompt.model, tokenizer_path="/m")
    assert config.num_virtual_tokens == 5 and config.prompt_tuning_init_text == "Answer:"
    assert methods.RESULT_KINDS["prefix-tuning"] == "prefix" and methods.RESULT_KINDS["head-only"] == "full"


def test_precision_on_cpu():
    if torch.cuda.is_available():
        pytest.skip("CPU rules")
    assert resolve_precision("auto") == "fp32"
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        resolve_precision("fp16")


def test_rendered_config_is_read_from_the_env_path(tmp_path, monkeypatch):
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "job": {
                    "apiVersion": "kubetune.io/v1alpha1",
                    "kind": "FineTuneJob",
                    "metadata": {"name": "x"},
                    "spec": {
                        "model": {"uri": "hf://org/m"},
                        "dataset": {"uri": "pvc://data/d.jsonl"},
                        "output": {"uri": "pvc://models/x"},
                    },
                },
                "runtime": {"runId": "abc", "outputDir": "/mnt/pvc/models/x"},
            }
        )
    )
    monkeypatch.setenv("KUBETUNE_CONFIG", str(path))
    config = load_config()
    assert config.runtime.run_id == "abc" and config.job.spec.dataset.uri == "pvc://data/d.jsonl"
    path.write_text(path.read_text().replace("pvc://data/d.jsonl", "file:///d.jsonl"))
    with pytest.raises(ConfigError, match="file://"):
        load_config()


def test_trainer_entrypoint_fails_clearly_without_config(tmp_path, monkeypatch, capsys):
    from kubetune_trainer.cli import main

    monkeypatch.setenv("KUBETUNE_CONFIG", str(tmp_path / "missing.yaml"))
    assert main(["train"]) == 1
    assert "missing.yaml" in capsys.readouterr().err


def test_local_run_rejects_a_bad_manifest(tmp_path, capsys):
    from kubetune_trainer.local import run_local

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: kubetune.io/v1alpha1\nkind: FineTuneJob\nmetadata: {name: b}\n"
        "spec: {model: {uri: 'file:///m', task: sequence-classification}, dataset: {uri: 'file:///d'}}\n"
    )
    assert run_local(str(bad), str(tmp_path / "out")) == 1
    assert "numLabels" in capsys.readouterr().err
    assert run_local(str(tmp_path / "nope.yaml"), None) == 1
