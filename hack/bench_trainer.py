#!/usr/bin/env python
"""Trainer benchmark: kubetune (LoRA SFT with packing, through kubetune_trainer.train) against a
plain padded HF Trainer + PEFT LoRA baseline, on the same random-weight Llama and the same variable-length
texts, in one run. Reports real (non-padding) tokens per second of each, their ratio, and each side's
packing efficiency (real tokens / tokens computed). On a GPU it also reports MFU and peak memory.

    make bench                                     # CPU defaults: 160 texts, 3 alternating runs per side (a few minutes)
    .venv/bin/python hack/bench_trainer.py --size 8b --texts 2000 --max-length 2048 --batch-size 4 --repeats 1   # a GPU (bf16)
    .venv/bin/python hack/bench_trainer.py --flattened --json results.json   # + TRL's one flattened row

Nothing reaches a hub: the tokenizer is trained on the generated texts, the model is built from a config.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
for sub in ("operator", "trainer_image"):
    if str(ROOT / sub) not in sys.path:
        sys.path.insert(0, str(ROOT / sub))

# Llama shapes: (hidden, layers, heads, kv heads, intermediate, vocab)
SIZES = {
    "tiny": (256, 4, 4, 4, 688, 4000),  # CPU: ~4M parameters, attention is a real part of the work
    "1b": (2048, 16, 32, 8, 8192, 32000),
    "8b": (4096, 32, 32, 8, 14336, 32000),  # Llama-3-8B-shaped (smaller vocabulary)
}
PEAK_BF16_FLOPS = {
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10": 125e12,
    "L4": 121e12,
}

WORDS = [
    "the",
    "a",
    "model",
    "learns",
    "from",
    "data",
    "and",
    "each",
    "step",
    "updates",
    "weights",
    "when",
    "loss",
    "goes",
    "down",
    "training",
    "runs",
    "on",
    "many",
    "nodes",
    "with",
    "gpus",
    "while",
    "the",
    "operator",
    "watches",
    "jobs",
    "pods",
    "restart",
    "from",
    "checkpoints",
    "adapters",
    "merge",
    "into",
    "base",
    "models",
    "users",
    "apply",
    "manifests",
    "kubernetes",
    "schedules",
    "work",
    "tokens",
    "flow",
    "through",
    "attention",
    "layers",
    "quickly",
]


def make_texts(n: int, seed: int, min_words: int, max_words: int) -> list[str]:
    """Variable-length texts: log-uniform lengths, like instruction data (many short, some long)."""
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        words = int(math.exp(rng.uniform(math.log(min_words), math.log(max_words))))
        texts.append(" ".join(rng.choice(WORDS) for _ in range(words)) + ".")
    return texts


def build_model_dir(path: Path, size: str, texts: list[str]) -> None:
    import torch
    import transformers as tf

    from kubetune_trainer import tiny

    hidden, layers, heads, kv, inter, vocab = SIZES[size]
    tokenizer = tiny.build_tokenizer(texts[:2000], path / "tokenizer", vocab_size=min(vocab, 4000))
    torch.manual_seed(0)
    config = tf.LlamaConfig(
        vocab_size=max(vocab, len(tokenizer)), hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    # Stored in bf16 like real checkpoints (an 8B model is 16 GB then); built on the GPU when there is one
    # (random init of 8B parameters on the CPU takes minutes).
    dtype = torch.float32 if size == "tiny" else torch.bfloat16
    with torch.device("cuda" if torch.cuda.is_available() and size != "tiny" else "cpu"):
        model = tf.LlamaForCausalLM._from_config(config, dtype=dtype)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    del model


class CountingCollator:
    """Wraps a data collator: counts real (non-padding) tokens and tokens the model computes on."""

    def __init__(self, inner, pad_id: int):
        self.inner, self.pad_id = inner, pad_id
        self.real = 0
        self.computed = 0

    def __call__(self, features):
        batch = self.inner(features)
        ids = batch["input_ids"]
        self.computed += int(ids.numel())
        if "attention_mask" in batch:
            self.real += int(batch["attention_mask"].sum())
        else:  # padding-free: one flattened row, no padding (pad id is distinct from eos here)
            self.real += int((ids != self.pad_id).sum())
        return batch

    def __getattr__(self, name):
        return getattr(self.inner, name)


def lora_spec() -> dict:
    return {"r": 16, "alpha": 32, "dropout": 0.05, "targetModules": "all-linear"}


def run_kubetune(
    work: Path, model_dir: Path, data_file: Path, args, precision: str, flattened: bool = False
) -> dict:
    """The kubetune side, through the trainer the pods run (kubetune_trainer.train.run_training). flattened:
    TRL's padding-free collator instead (the whole batch as one row), the path kubetune keeps for
    flash-attention and shipped for every attention implementation before packed rows."""
    from kubetune.api.v1alpha1 import TARGET_LOCAL, FineTuneJob
    from kubetune_trainer import config as config_mod
    from kubetune_trainer import objectives, train

    job = FineTuneJob.model_validate(
        {
            "apiVersion": "kubetune.io/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": "bench"},
            "spec": {
                "model": {"uri": f"file://{model_dir}"},
                "dataset": {"uri": f"file://{data_file}", "format": "text", "maxLength": args.max_length,
                            "packing": True},
                "method": {"type": "lora", "lora": lora_spec()},
                "training": {"epochs": 1, "batchSize": args.batch_size, "learningRate": 2e-4, "precision": precision,
                             "seed": 0},
                "checkpoints": {"everySteps": 10**9},
                "output": {"uri": f"file://{work / 'kubetune-out'}"},
            },
        },
        context={"target": TARGET_LOCAL},
    )  # fmt: skip
    config = config_mod.local_config(job, str(work / "kubetune-out"))
    captured: dict[str, Any] = {}
    original = objectives.build_trainer

    def build_trainer(*a, **kw):
        trainer = original(*a, **kw)
        pad = trainer.processing_class.pad_token_id
        inner = trainer.data_collator
        if flattened:
            from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

            inner = DataCollatorForLanguageModeling(pad_token_id=pad, padding_free=True)
        captured["collation"] = type(inner).__name__ + (
            " (padding-free)" if getattr(inner, "padding_free", 0) else ""
        )
        trainer.data_collator = captured["collator"] = CountingCollator(inner, pad)
        captured["trainer"] = trainer
        return trainer

    objectives.build_trainer = build_trainer
    try:
        outcome = train.run_training(config)
    finally:
        objectives.build_trainer = original
    trainer, counter = captured["trainer"], captured["collator"]
    name = "flattened: TRL one-row padding-free" if flattened else "kubetune (LoRA, packing)"
    result = summarize(name, trainer, counter, outcome.metrics["train_runtime"])
    result["collator"] = captured["collation"]
    return result


def run_baseline(work: Path, model_dir: Path, texts: list[str], args, precision: str) -> dict:
    """A plain HF Trainer + PEFT LoRA recipe: tokenize, pad each batch to its longest text."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    set_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
    spec = lora_spec()
    model = get_peft_model(
        base,
        LoraConfig(r=spec["r"], lora_alpha=spec["alpha"], lora_dropout=spec["dropout"],
                   target_modules="all-linear", task_type="CAUSAL_LM"),
    )  # fmt: skip

    def tokenize(batch):
        out = tokenizer(batch["text"], truncation=True, max_length=args.max_length - 1)
        out["input_ids"] = [ids + [tokenizer.eos_token_id] for ids in out["input_ids"]]
        out["attention_mask"] = [m + [1] for m in out["attention_mask"]]
        return out

    data = Dataset.from_dict({"text": texts}).map(tokenize, batched=True, remove_columns=["text"])
    counter = CountingCollator(DataCollatorForLanguageModeling(tokenizer, mlm=False), tokenizer.pad_token_id)
    targs = TrainingArguments(
        output_dir=str(work / "baseline-out"), num_train_epochs=1, per_device_train_batch_size=args.batch_size,
        learning_rate=2e-4, bf16=precision == "bf16", logging_steps=10, save_strategy="no", report_to=[],
        seed=0, data_seed=0, use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0,
        disable_tqdm=True, include_num_input_tokens_seen="non_padding",
    )  # fmt: skip
    trainer = Trainer(model=model, args=targs, train_dataset=data, data_collator=counter)
    output = trainer.train()
    return summarize(
        "baseline (HF Trainer + PEFT LoRA, padded)", trainer, counter, output.metrics["train_runtime"]
    )


def model_flops_per_token(model, seq_len: float) -> float:
    """Training FLOPs per token, the usual convention: 6 x parameters (forward + backward) plus attention
    (12 x layers x hidden x sequence length). LoRA still back-propagates through the frozen weights."""
    config = model.config
    params = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n)
    return 6 * params + 12 * config.num_hidden_layers * config.hidden_size * seq_len


def summarize(name: str, trainer, counter: CountingCollator, runtime: float) -> dict:
    import torch

    result = {
        "name": name,
        "train_runtime_s": round(runtime, 3),
        "steps": trainer.state.global_step,
        "real_tokens": counter.real,
        "computed_tokens": counter.computed,
        "tokens_per_second": round(counter.real / runtime, 1),
        "packing_efficiency": round(counter.real / max(counter.computed, 1), 4),
        "final_loss": next((h["loss"] for h in reversed(trainer.state.log_history) if "loss" in h), None),
    }
    if torch.cuda.is_available():
        model = trainer.model
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        seq = counter.computed / max(trainer.state.global_step * trainer.args.per_device_train_batch_size, 1)
        flops = model_flops_per_token(base, seq)
        name_gpu = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name_gpu), None)
        result["model_tflops_per_second"] = round(flops * counter.real / runtime / 1e12, 2)
        result["mfu"] = round(flops * counter.real / runtime / peak, 4) if peak else None
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        torch.cuda.reset_peak_memory_stats()
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--texts", type=int, default=160, help="number of training texts (one epoch)")
    parser.add_argument("--min-words", type=int, default=8)
    parser.add_argument("--max-words", type=int, default=400)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs per side, alternating (best is reported)"
    )
    parser.add_argument(
        "--flattened",
        action="store_true",
        help="also run kubetune with TRL's one flattened padding-free row (its flash-attention path) instead",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)

    import logging

    import torch

    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    work = Path(tempfile.mkdtemp(prefix="kubetune-bench-"))
    try:
        texts = make_texts(args.texts, 0, args.min_words, args.max_words)
        data_file = work / "train.jsonl"
        data_file.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        model_dir = work / "model"
        t0 = time.perf_counter()
        build_model_dir(model_dir, args.size, texts)
        print(f"model {args.size} built in {time.perf_counter() - t0:.1f}s; {len(texts)} texts; "
              f"device {'cuda: ' + torch.cuda.get_device_name() if cuda else 'cpu'}; precision {precision}; "
              f"torch threads {torch.get_num_threads()}", flush=True)  # fmt: skip

        # Alternating order over the repeats (B K, K B, B K, ...): drift in machine load hits every side alike;
        # each side's figure is its best run (the one least disturbed by other work on the machine).
        sides = ["baseline", "kubetune"] + (["flattened"] if args.flattened else [])
        runs: dict[str, list[dict]] = {side: [] for side in sides}
        for i in range(args.repeats):
            for side in sides if i % 2 == 0 else reversed(sides):
                if side == "baseline":
                    result = run_baseline(work / f"b{i}", model_dir, texts, args, precision)
                else:
                    result = run_kubetune(work / f"{side}{i}", model_dir, data_file, args, precision,
                                          flattened=side == "flattened")  # fmt: skip
                runs[side].append(result)
                print(json.dumps(result), flush=True)
        best = {}
        for side in sides:
            best[side] = max(runs[side], key=lambda r: r["tokens_per_second"])
            best[side]["runs_tokens_per_second"] = [r["tokens_per_second"] for r in runs[side]]
        baseline, kubetune = best["baseline"], best["kubetune"]

        report: dict[str, Any] = {
            "device": torch.cuda.get_device_name()
            if cuda
            else f"cpu ({platform.processor() or platform.machine()})",
            "torch_threads": torch.get_num_threads(),
            "precision": precision,
            "size": args.size,
            "texts": len(texts),
            "max_length": args.max_length,
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            **best,
            "speedup_tokens_per_second": round(
                kubetune["tokens_per_second"] / baseline["tokens_per_second"], 3
            ),
            # What packing could give if every computed token cost the same: the ratio of the packing
            # efficiencies (the baseline computes this many times the tokens per token learned).
            "packing_ideal_speedup": round(
                kubetune["packing_efficiency"] / baseline["packing_efficiency"], 3
            ),
            "speedup_each_pair": [
                round(k["tokens_per_second"] / b["tokens_per_second"], 3)
                for b, k in zip(runs["baseline"], runs["kubetune"], strict=True)
            ],
            "load_average": [round(x, 2) for x in os.getloadavg()],
        }
        report["share_of_ideal"] = round(
            report["speedup_tokens_per_second"] / report["packing_ideal_speedup"], 3
        )
        if args.flattened:
            report["flattened_speedup_tokens_per_second"] = round(
                best["flattened"]["tokens_per_second"] / baseline["tokens_per_second"], 3
            )
        print()
        print(f"{'':44s}{'tokens/s':>12s}{'packing eff.':>14s}{'runtime s':>11s}{'steps':>7s}")
        for figures in best.values():
            print(f"{figures['name']:44s}{figures['tokens_per_second']:12,.0f}{figures['packing_efficiency']:14.1%}"
                  f"{figures['train_runtime_s']:11.1f}{figures['steps']:7d}")  # fmt: skip
        print(f"speedup (kubetune / baseline tokens per second, best of {args.repeats} each): "
              f"{report['speedup_tokens_per_second']:.2f}x; packing's ideal {report['packing_ideal_speedup']:.2f}x "
              f"(efficiency {kubetune['packing_efficiency']:.1%} / {baseline['packing_efficiency']:.1%}): "
              f"{report['share_of_ideal']:.0%} of it; pairs of neighbouring runs: {report['speedup_each_pair']}; "
              f"load average {report['load_average']}")  # fmt: skip
        if args.flattened:
            print(f"flattened / baseline: {report['flattened_speedup_tokens_per_second']:.2f}x")
        print(f"kubetune collator: {kubetune['collator']}")
        for figures in best.values():
            print(f"  {figures['name']}: tokens/s of each run {figures['runs_tokens_per_second']}")
        if cuda:
            for figures in best.values():
                print(
                    f"{figures['name']}: MFU {figures.get('mfu')}, peak memory {figures.get('peak_memory_gib')} GiB"
                )
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work directory kept: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
