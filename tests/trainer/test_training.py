"""Real training on CPU with tiny models, per task and method: the loss goes down, the saved result reloads
and gives the same outputs, merged models equal base + adapter, DPO moves the preference margin."""

from __future__ import annotations

import json

import pytest
import torch

from kubetune_trainer.train import run_training

from .test_objectives import missing_metrics
from .toy import CAPITALS, job_config, logged_losses

pytestmark = pytest.mark.trainer

PROBE = "The capital of France is"


def assert_learned(outcome, factor: float = 0.9) -> None:
    losses = logged_losses(outcome.trainer)
    assert len(losses) >= 4, losses
    first, last = losses[0], sum(losses[-3:]) / 3
    assert last < first * factor, f"loss did not go down: first {first:.4f}, last {last:.4f} ({losses})"


def logits(model, input_ids, **extra):
    model.eval()
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **extra).logits


def probe_ids(tokenizer, text: str = PROBE):
    return torch.tensor([tokenizer(text)["input_ids"]])


def assert_complete_result(outcome, kind: str) -> None:
    from pathlib import Path

    out = Path(outcome.result["uri"][len("file://") :])
    assert outcome.result["kind"] == kind
    success = out / "_SUCCESS"
    assert success.exists()
    assert json.loads(success.read_text())["uri"] == outcome.result["uri"]
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["dataset"]["digest"].startswith("sha256:")
    assert lineage["configHash"] == outcome.result["configHash"]
    assert lineage["metrics"] == outcome.result["metrics"]
    assert (out / "README.md").read_text().startswith("---")
    # the marker is written last
    newest = max(p.stat().st_mtime_ns for p in out.iterdir() if p.is_file())
    assert success.stat().st_mtime_ns == newest


# ---------------------------------------------------------------- causal-lm


@pytest.fixture(scope="module")
def lora_run(assets, datasets_dir, tmp_path_factory):
    config = job_config(
        tmp_path_factory.mktemp("lora"),
        assets["llama"],
        datasets_dir / "capitals.jsonl",
        dataset={"evalFraction": 0.25},
        training={"maxSteps": 16, "metrics": ["perplexity", "exact-match"]},
        output={"mergeAdapter": True},
    )
    return config, run_training(config)


def test_causal_lora_learns_and_reports_metrics(lora_run):
    config, outcome = lora_run
    assert_learned(outcome)
    metrics = outcome.result["metrics"]
    assert metrics["eval_perplexity"] == pytest.approx(__import__("math").exp(metrics["eval_loss"]), rel=1e-6)
    assert "eval_exact_match" in metrics
    assert_complete_result(outcome, "adapter")
    assert outcome.result["mergedUri"].endswith("/merged")


def test_causal_lora_adapter_reloads_and_merged_equals_base_plus_adapter(lora_run, assets):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config, outcome = lora_run
    out = config.runtime.output_dir
    ids = probe_ids(outcome.tokenizer)
    trained = logits(outcome.model, ids)
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(assets["llama"]), out)
    torch.testing.assert_close(logits(reloaded, ids), trained, atol=1e-5, rtol=1e-4)
    merged = AutoModelForCausalLM.from_pretrained(f"{out}/merged")
    torch.testing.assert_close(logits(merged, ids), trained, atol=1e-4, rtol=1e-3)
    base = AutoModelForCausalLM.from_pretrained(assets["llama"])
    assert not torch.allclose(logits(base, ids), trained, atol=1e-3)


def test_causal_full_text_packing(assets, datasets_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    config = job_config(
        tmp_path,
        assets["gpt2"],
        datasets_dir / "text.jsonl",
        dataset={"packing": True, "format": "text"},
        method={"type": "full"},
        training={"maxSteps": 10, "learningRate": 3e-3, "batchSize": 4},
    )
    outcome = run_training(config)
    assert "seq_lengths" in outcome.trainer.train_dataset.column_names  # packed, padding-free batches
    assert_learned(outcome)
    assert_complete_result(outcome, "full")
    ids = probe_ids(outcome.tokenizer)
    reloaded = AutoModelForCausalLM.from_pretrained(config.runtime.output_dir)
    torch.testing.assert_close(logits(reloaded, ids), logits(outcome.model, ids), atol=1e-5, rtol=1e-4)


def test_causal_instruction_ia3_merge(assets, datasets_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    config = job_config(
        tmp_path,
        assets["llama"],
        datasets_dir / "instruction.jsonl",
        method={"type": "ia3"},
        output={"mergeAdapter": True},
        training={"maxSteps": 30, "learningRate": 1e-1},
    )
    outcome = run_training(config)
    assert_learned(outcome, 0.97)
    assert outcome.data.format == "instruction"
    ids = probe_ids(outcome.tokenizer)
    merged = AutoModelForCausalLM.from_pretrained(f"{config.runtime.output_dir}/merged")
    torch.testing.assert_close(logits(merged, ids), logits(outcome.model, ids), atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize(
    "method",
    [
        {"type": "prefix-tuning", "prefixTuning": {"numVirtualTokens": 4}},
        {"type": "prompt-tuning", "promptTuning": {"numVirtualTokens": 4, "initText": "The capital"}},
    ],
)
def test_causal_prefix_and_prompt_tuning(assets, datasets_dir, tmp_path, method):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config = job_config(
        tmp_path,
        assets["llama"],
        datasets_dir / "messages.jsonl",
        method=method,
        training={"maxSteps": 30, "learningRate": 1e-1},
    )
    outcome = run_training(config)
    assert outcome.data.format == "messages"
    assert_learned(outcome, 0.97)
    kind = "prefix" if method["type"] == "prefix-tuning" else "prompt"
    assert_complete_result(outcome, kind)
    ids = probe_ids(outcome.tokenizer)
    reloaded = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(assets["llama"]), config.runtime.output_dir
    )
    torch.testing.assert_close(logits(reloaded, ids), logits(outcome.model, ids), atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- DPO


def preference_margin(model, tokenizer, rows) -> float:
    """Mean over rows of log p(chosen | prompt) - log p(rejected | prompt)."""
    model.eval()
    total = 0.0
    for row in rows:
        prompt = tokenizer(row["prompt"])["input_ids"]
        values = []
        for key in ("chosen", "rejected"):
            completion = tokenizer(row[key], add_special_tokens=False)["input_ids"]
            ids = torch.tensor([prompt + completion])
            with torch.no_grad():
                logp = model(input_ids=ids).logits.log_softmax(-1)[0, :-1]
            targets = ids[0, 1:]
            token_logp = logp.gather(-1, targets[:, None])[:, 0][len(prompt) - 1 :]
            values.append(float(token_logp.sum()))
        total += values[0] - values[1]
    return total / len(rows)


def test_dpo_moves_the_preference_margin(assets, datasets_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    rows = [json.loads(line) for line in (datasets_dir / "preference.jsonl").read_text().splitlines()][
        : len(CAPITALS)
    ]
    config = job_config(
        tmp_path,
        assets["llama"],
        datasets_dir / "preference.jsonl",
        dataset={"format": "preference"},
        objective={"type": "dpo", "dpo": {"beta": 0.1}},
        training={"maxSteps": 10, "learningRate": 1e-2},
    )
    base = AutoModelForCausalLM.from_pretrained(assets["llama"])
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(assets["llama"])
    before = preference_margin(base, tokenizer, rows)
    outcome = run_training(config)
    after = preference_margin(outcome.model, tokenizer, rows)
    assert after > before + 0.2, (before, after)
    assert outcome.result["kind"] == "adapter"
    assert "rewards/margins" in " ".join(k for e in outcome.trainer.state.log_history for k in e)
    assert not missing_metrics(outcome.trainer, "dpo")


# ---------------------------------------------------------------- seq2seq


def test_seq2seq_lora_with_prefix_and_generation_metrics(assets, datasets_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM

    config = job_config(
        tmp_path,
        assets["t5"],
        datasets_dir / "seq2seq.jsonl",
        model={"task": "seq2seq"},
        dataset={"sourcePrefix": "capital: ", "evalFraction": 0.25, "targetMaxLength": 8},
        training={"maxSteps": 12, "learningRate": 1e-2, "metrics": ["rouge", "bleu", "exact-match"]},
    )
    outcome = run_training(config)
    assert_learned(outcome)
    for key in ("eval_rouge1", "eval_rougeL", "eval_bleu", "eval_exact_match"):
        assert key in outcome.result["metrics"]
    # The source prefix leads every source (after the tokenizer's BOS), and the target is that row's own.
    first, label = (outcome.tokenizer.decode(outcome.data.train[0][key]) for key in ("input_ids", "labels"))
    country = first.removeprefix("<s> capital: ")
    assert country in dict(CAPITALS), first
    assert label == f"<s> {dict(CAPITALS)[country]}", (first, label)
    ids = probe_ids(outcome.tokenizer, "capital: France")
    decoder = torch.tensor([[outcome.tokenizer.pad_token_id]])
    reloaded = PeftModel.from_pretrained(
        AutoModelForSeq2SeqLM.from_pretrained(assets["t5"]), config.runtime.output_dir
    )
    torch.testing.assert_close(
        logits(reloaded, ids, decoder_input_ids=decoder),
        logits(outcome.model, ids, decoder_input_ids=decoder),
        atol=1e-5,
        rtol=1e-4,
    )


# ---------------------------------------------------------------- classification


def test_sequence_classification_minilm_full(minilm_path, datasets_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    config = job_config(
        tmp_path,
        minilm_path,
        datasets_dir / "sentiment.jsonl",
        model={"task": "sequence-classification", "numLabels": 2, "labels": ["neg", "pos"]},
        dataset={"evalFraction": 0.25},
        method={"type": "full"},
        training={
            "maxSteps": 16,
            "learningRate": 1e-4,
            "batchSize": 8,
            "metrics": ["accuracy", "f1", "precision", "recall"],
        },
    )
    outcome = run_training(config)
    assert_learned(outcome)
    metrics = outcome.result["metrics"]
    assert metrics["eval_accuracy"] >= 0.75, metrics
    assert {"eval_f1", "eval_precision", "eval_recall"} <= set(metrics)
    reloaded = AutoModelForSequenceClassification.from_pretrained(config.runtime.output_dir)
    assert reloaded.config.id2label == {0: "neg", 1: "pos"}
    ids = probe_ids(outcome.tokenizer, "a lovely happy day")
    torch.testing.assert_close(logits(reloaded, ids), logits(outcome.model, ids), atol=1e-5, rtol=1e-4)


def test_sequence_classification_head_only_trains_only_the_head(minilm_path, datasets_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    config = job_config(
        tmp_path,
        minilm_path,
        datasets_dir / "sentiment.jsonl",
        model={"task": "sequence-classification", "numLabels": 2},
        method={"type": "head-only", "headOnly": {"trainable": ["classifier"], "unfreezeLastLayers": 1}},
        training={"maxSteps": 16, "learningRate": 2e-3},
    )
    outcome = run_training(config)
    assert_learned(outcome)
    base = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2)
    after = dict(outcome.model.named_parameters())
    changed = [n for n, p in base.named_parameters() if not torch.equal(p, after[n].detach())]
    assert any(n.startswith("classifier") for n in changed) and any(".layer.5." in n for n in changed), (
        changed
    )
    assert all(n.startswith(("classifier", "bert.encoder.layer.5.")) for n in changed), changed


def test_token_classification_lora_with_tag_names(assets, datasets_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForTokenClassification

    config = job_config(
        tmp_path,
        assets["bert-tokens"],
        datasets_dir / "tagging.jsonl",
        model={"task": "token-classification", "numLabels": 3, "labels": ["O", "COLOR", "ANIMAL"]},
        dataset={"evalFraction": 0.25},
        training={"maxSteps": 12, "learningRate": 2e-2, "metrics": ["accuracy", "f1"]},
    )
    outcome = run_training(config)
    assert_learned(outcome)
    assert "eval_accuracy" in outcome.result["metrics"]
    ids = probe_ids(outcome.tokenizer, "the red cat")
    reloaded = PeftModel.from_pretrained(
        AutoModelForTokenClassification.from_pretrained(assets["bert-tokens"]), config.runtime.output_dir
    )
    torch.testing.assert_close(logits(reloaded, ids), logits(outcome.model, ids), atol=1e-5, rtol=1e-4)
