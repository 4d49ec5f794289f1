#!/usr/bin/env python
"""The fit estimate (kubetune.api.fit) against the tensors a real training step makes, on CPU.

For each model and method: the model is built from its config (random weights), adapted with the trainer's
own code (kubetune_trainer.methods.apply_method), one batch goes forward and backward, and the optimizer the
trainer configures takes one step. Measured, in bytes: the parameters, their gradients, the optimizer's state
tensors, and the activations autograd saved for the backward pass (saved-tensor hooks, each storage counted
once) plus the logits. Printed beside the estimate's figures for the same spec (precision fp32: the CPU's).

    .venv/bin/python hack/bench_fit.py [--json FILE] [--only NAME]

docs/benchmarks.md has the table; tests/trainer/test_fit_accuracy.py asserts the parameter, gradient and
optimizer figures within 10% on some of these cases.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
for sub in ("operator", "trainer_image"):
    if str(ROOT / sub) not in sys.path:
        sys.path.insert(0, str(ROOT / sub))

# Configs of real models (the published config.json values that change the count), and tiny ones.
CONFIGS: dict[str, dict[str, Any]] = {
    "tiny-llama": {"model_type": "llama", "vocab_size": 1024, "hidden_size": 64, "intermediate_size": 176,
                   "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2},
    "small-llama": {"model_type": "llama", "vocab_size": 32000, "hidden_size": 512, "intermediate_size": 1408,
                    "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 4},
    "gpt2": {"model_type": "gpt2", "vocab_size": 50257, "n_embd": 768, "n_layer": 12, "n_head": 12,
             "n_positions": 1024},
    "bert-base-uncased": {"model_type": "bert", "vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12,
                          "num_attention_heads": 12, "intermediate_size": 3072, "max_position_embeddings": 512,
                          "type_vocab_size": 2},
    "t5-small": {"model_type": "t5", "vocab_size": 32128, "d_model": 512, "d_kv": 64, "num_heads": 8,
                 "d_ff": 2048, "num_layers": 6, "feed_forward_proj": "relu", "tie_word_embeddings": True,
                 "decoder_start_token_id": 0, "pad_token_id": 0},
}  # fmt: skip


@dataclass(frozen=True)
class Case:
    name: str
    model: str
    task: str
    method: str
    optimizer: str = "adamw"
    batch: int = 4
    seq: int = 128
    checkpointing: bool = False


CASES = [
    Case("tiny-llama full", "tiny-llama", "causal-lm", "full"),
    Case("tiny-llama lora", "tiny-llama", "causal-lm", "lora"),
    Case("small-llama full", "small-llama", "causal-lm", "full"),
    Case("small-llama full adafactor", "small-llama", "causal-lm", "full", optimizer="adafactor"),
    Case("small-llama lora", "small-llama", "causal-lm", "lora"),
    Case("small-llama lora ckpt", "small-llama", "causal-lm", "lora", checkpointing=True),
    Case("small-llama ia3", "small-llama", "causal-lm", "ia3"),
    Case("small-llama prefix", "small-llama", "causal-lm", "prefix-tuning"),
    Case("gpt2 full", "gpt2", "causal-lm", "full", batch=2, seq=64),
    Case("gpt2 lora", "gpt2", "causal-lm", "lora", batch=2, seq=64),
    Case("bert-base seq-cls full", "bert-base-uncased", "sequence-classification", "full", batch=2, seq=64),
    Case("bert-base seq-cls lora", "bert-base-uncased", "sequence-classification", "lora", batch=2, seq=64),
    Case("bert-base head-only", "bert-base-uncased", "sequence-classification", "head-only", batch=2, seq=64),
    Case("t5-small seq2seq lora", "t5-small", "seq2seq", "lora", batch=2),
]


def spec_for(case: Case):
    from kubetune.api.v1alpha1 import FineTuneJobSpec

    classification = "classification" in case.task
    return FineTuneJobSpec.model_validate(
        {
            "model": {"uri": "file:///model", "task": case.task, **({"numLabels": 2} if classification else {})},
            "dataset": {"uri": "file:///data", "maxLength": case.seq, "targetMaxLength": case.seq // 2},
            "method": {"type": case.method},
            "training": {"batchSize": case.batch, "optimizer": case.optimizer,
                         "gradientCheckpointing": case.checkpointing, "precision": "fp32"},
            "resources": {"gpusPerNode": 0},
        },
        context={"target": "local"},
    )  # fmt: skip


def _unique_bytes(tensors) -> int:
    seen: dict[tuple[int, int], int] = {}
    for t in tensors:
        if t is None or t.device.type == "meta":
            continue
        storage = t.untyped_storage()
        seen[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
    return sum(seen.values())


def build(case: Case, config: dict[str, Any]):
    import transformers

    from kubetune_trainer.methods import apply_method
    from kubetune_trainer.model import AUTO_CLASSES

    spec = spec_for(case)
    kwargs = {"num_labels": 2} if "classification" in case.task else {}
    cfg = transformers.AutoConfig.for_model(**{**config, **kwargs})
    auto = getattr(transformers, AUTO_CLASSES[case.task])
    model = auto.from_config(
        cfg, attn_implementation="sdpa"
    )  # from_pretrained's default, as the trainer loads
    model, _kind = apply_method(model, spec.method, spec.model, gradient_checkpointing=case.checkpointing)
    if case.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return spec, model


def measure(case: Case, config: dict[str, Any] | None = None) -> dict[str, int]:
    """Bytes of parameters, gradients, optimizer state and saved activations of one real step on CPU
    (CONFIG: the model's config.json; default: CONFIGS[case.model])."""
    import torch

    torch.manual_seed(0)
    config = config or CONFIGS[case.model]
    spec, model = build(case, config)
    model.train()
    vocab = config["vocab_size"]
    ids = torch.randint(0, vocab, (case.batch, case.seq))
    batch: dict[str, Any] = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if case.task == "seq2seq":
        batch["labels"] = torch.randint(0, vocab, (case.batch, case.seq // 2))
    elif "classification" in case.task:
        batch["labels"] = torch.randint(0, 2, (case.batch,))
    else:
        batch["labels"] = ids.clone()
    params = _unique_bytes(p for p in model.parameters())
    saved: list = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(**batch)
    # parameters saved for the backward pass are weights, not activations
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    activations = _unique_bytes(
        [t for t in [*saved, out.logits] if t.untyped_storage().data_ptr() not in weights]
    )
    saved.clear()
    out.loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    gradients = _unique_bytes(p.grad for p in trainable)
    if case.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        optimizer: torch.optim.Optimizer = Adafactor(
            trainable, lr=1e-3, scale_parameter=False, relative_step=False
        )
    else:
        optimizer = torch.optim.AdamW(trainable, lr=1e-3, fused=True)  # the trainer's adamw_torch_fused
    optimizer.step()
    state = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0]
    return {
        "params": params,
        "gradients": gradients,
        "optimizer": _unique_bytes(state),
        "activations": activations,
    }


def estimated(case: Case, config: dict[str, Any] | None = None) -> dict[str, int]:
    from kubetune.api.fit import activation_parts, estimate, settings_for
    from kubetune.api.modelshape import shape

    config = config or CONFIGS[case.model]
    spec = spec_for(case)
    found = estimate(spec, config)
    # measured are the tensors saved in the forward pass (and the logits): compare with that part
    parts = activation_parts(settings_for(spec), shape(config, case.task, spec.model.num_labels))
    return {
        "params": found.weights,
        "gradients": found.gradients,
        "optimizer": found.optimizer,
        "activations": int(parts.saved),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--only", help="cases whose name contains this")
    args = parser.parse_args(argv)
    rows = []
    mib = 2**20
    print(f"{'case':30} {'what':12} {'measured MiB':>13} {'estimate MiB':>13} {'ratio':>7}")
    for case in CASES:
        if args.only and args.only not in case.name:
            continue
        got, est = measure(case), estimated(case)
        for what in ("params", "gradients", "optimizer", "activations"):
            ratio = est[what] / got[what] if got[what] else float("nan")
            print(f"{case.name:30} {what:12} {got[what] / mib:13.2f} {est[what] / mib:13.2f} {ratio:7.3f}")
        rows.append({"case": case.name, "measured": got, "estimate": est})
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
