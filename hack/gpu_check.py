#!/usr/bin/env python
"""The GPU check (run by hack/gpu_check.sh): what the CPU tests cannot show, measured on one GPU, as JSON.

1. qlora: QLoRA (4-bit NF4, double quantization, r=64, alpha=16, q/k/v/o) on a Llama-shaped random model of
   about 1B parameters, a few dozen steps through the trainer the pods run (kubetune_trainer.train): the loss
   falls, peak memory, tokens/s; then the merged-adapter save (base reloaded unquantized, adapter merged),
   reloaded and run once.
2. bench-1b, bench-8b: bf16 LoRA with packing against the padded HF Trainer + PEFT baseline
   (hack/bench_trainer.py): tokens/s, MFU, peak memory of each side.
3. fit: the fit estimate (kubetune.api.fit) against torch.cuda.max_memory_allocated of one training step on
   1B and 8B Llama shapes (LoRA, full with checkpointing, QLoRA).

--dry-run runs the same steps with the tiny shape on whatever is there (CPU: LoRA instead of QLoRA, since
bitsandbytes 4-bit needs a GPU), to check the kit end to end before a GPU is spent on it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from importlib import metadata
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
for sub in ("operator", "trainer_image"):
    if str(ROOT / sub) not in sys.path:
        sys.path.insert(0, str(ROOT / sub))
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # for the hack package (this file's folder), last so it shadows nothing

from hack import bench_trainer  # noqa: E402

PACKAGES = ("torch", "transformers", "peft", "accelerate", "trl", "bitsandbytes", "datasets", "pydantic")


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def device_facts() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"device": f"cpu ({platform.machine()})", "cuda": False}
    props = torch.cuda.get_device_properties(0)
    return {
        "device": torch.cuda.get_device_name(),
        "cuda": True,
        "cuda_version": torch.version.cuda,
        "memory_gib": round(props.total_memory / 2**30, 1),
        "bf16": torch.cuda.is_bf16_supported(),
    }


def qlora(work: Path, size: str, steps: int, quantized: bool) -> dict:
    """QLoRA through kubetune_trainer.train on a random Llama of SIZE, then the merged-adapter save."""
    import torch
    from transformers import AutoModelForCausalLM

    from kubetune.api.v1alpha1 import TARGET_LOCAL, FineTuneJob
    from kubetune_trainer import config as config_mod
    from kubetune_trainer import train

    texts = bench_trainer.make_texts(4000 if quantized else 200, 0, 16, 400)
    data_file = work / "train.jsonl"
    data_file.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    model_dir = work / "model"
    started = time.perf_counter()
    bench_trainer.build_model_dir(model_dir, size, texts)
    build_s = time.perf_counter() - started
    method = (
        {
            "type": "qlora",
            "lora": {"r": 64, "alpha": 16, "dropout": 0.05, "targetModules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
            "quantization": {"bits": 4, "type": "nf4", "doubleQuant": True, "computeDtype": "bfloat16"},
        }
        if quantized
        else {"type": "lora", "lora": {"r": 64, "alpha": 16, "dropout": 0.05,
                                        "targetModules": ["q_proj", "k_proj", "v_proj", "o_proj"]}}
    )  # fmt: skip
    out = work / "qlora-out"
    job = FineTuneJob.model_validate(
        {
            "apiVersion": "kubetune.io/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": "gpu-check-qlora"},
            "spec": {
                "model": {"uri": f"file://{model_dir}"},
                "dataset": {"uri": f"file://{data_file}", "format": "text", "maxLength": 1024 if quantized else 256,
                            "packing": True},
                "method": method,
                "training": {"maxSteps": steps, "batchSize": 8 if quantized else 4, "learningRate": 1e-3,
                             "precision": "bf16" if quantized else "auto", "seed": 0},
                "resources": {"gpusPerNode": 1 if quantized else 0},
                "checkpoints": {"everySteps": 10**9},
                "output": {"uri": f"file://{out}", "mergeAdapter": True},
            },
        },
        context={"target": TARGET_LOCAL},
    )  # fmt: skip
    config = config_mod.local_config(job, str(out))
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    outcome = train.run_training(config)
    total_s = time.perf_counter() - started
    trainer = outcome.trainer
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    runtime = outcome.metrics.get("train_runtime") or total_s
    tokens = int(trainer.state.num_input_tokens_seen or 0)
    first, last = losses[0], sum(losses[-3:]) / len(losses[-3:])
    result = {
        "method": method["type"],
        "quantization": method.get("quantization"),
        "size": size,
        "parameters": sum(p.numel() for p in outcome.model.parameters()),
        "model_build_s": round(build_s, 1),
        "steps": trainer.state.global_step,
        "losses": [round(x, 4) for x in losses],
        "loss_first": round(first, 4),
        "loss_last3_mean": round(last, 4),
        "loss_falls": bool(last < first * 0.9),
        "train_runtime_s": round(runtime, 2),
        "tokens": tokens,
        "tokens_per_second": round(tokens / runtime, 1) if runtime else None,
        "run_with_save_and_merge_s": round(total_s, 1),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if torch.cuda.is_available()
        else None,
        "uri": outcome.result.get("uri"),
        "merged_uri": outcome.result.get("mergedUri"),
    }
    # The merged-adapter save: a plain model that loads and runs without PEFT or bitsandbytes.
    merged = out / "merged"
    result["merged_files_gib"] = round(
        sum(p.stat().st_size for p in merged.rglob("*") if p.is_file()) / 2**30, 3
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    reloaded = AutoModelForCausalLM.from_pretrained(
        str(merged), dtype=torch.bfloat16 if device == "cuda" else torch.float32
    )
    # transformers wraps PreTrainedModel.to with functools.wraps; typeshed's _Wrapped is no descriptor, so
    # mypy does not bind self and takes the device for it (a stub limitation, not a wrong call).
    reloaded = reloaded.to(device)  # type: ignore[arg-type]
    ids = outcome.tokenizer("the model learns from data", return_tensors="pt")["input_ids"].to(device)
    with torch.no_grad():
        logits = reloaded(input_ids=ids).logits
    result["merged_reloads_and_runs"] = bool(torch.isfinite(logits).all())
    del reloaded, outcome, trainer
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


# (size, method, batch, tokens, gradient checkpointing) of the fit check's comparison
FIT_CASES = [
    ("1b", "lora", 8, 1024, False),
    ("1b", "full", 4, 1024, True),
    ("1b", "qlora", 8, 1024, True),
    ("8b", "lora", 2, 1024, True),
    ("8b", "qlora", 4, 1024, True),
]


def fit(dry_run: bool) -> dict:
    """The fit estimate (kubetune.api.fit) against torch.cuda.max_memory_allocated of one real training step
    (the trainer's apply_method, bf16, AdamW, as hack/bench_fit.py does on CPU) on Llama shapes of 1B and 8B.
    max_memory_allocated sees tensors only: it is compared with the estimate without its fixed overhead."""
    import torch

    from hack import bench_fit
    from kubetune.api.fit import activation_parts, estimate, settings_for
    from kubetune.api.modelshape import shape

    cuda = torch.cuda.is_available()
    rows = []
    cases = [("tiny", "lora", 4, 64, False)] if dry_run else FIT_CASES
    for size, method, batch, tokens, checkpointing in cases:
        hidden, layers, heads, kv, inter, vocab = bench_trainer.SIZES[size]
        config = {"model_type": "llama", "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": inter,
                  "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv}  # fmt: skip
        case = bench_fit.Case(f"{size} {method}", size, "causal-lm", method, batch=batch, seq=tokens,
                              checkpointing=checkpointing)  # fmt: skip
        spec = bench_fit.spec_for(case)
        precision = "bf16" if cuda else "fp32"
        gpus = 1 if cuda else 0
        spec = spec.model_copy(update={
            "training": spec.training.model_copy(update={"precision": precision}),
            "resources": spec.resources.model_copy(update={"gpus_per_node": gpus}),
        })  # fmt: skip
        expected = estimate(spec, config)
        row: dict = {"case": case.name, "batch": batch, "tokens": tokens, "gradient_checkpointing": checkpointing,
                     "estimate_gib": expected.gib(), "estimate_total_gib": round(expected.total / 2**30, 2),
                     "estimate_tensors_gib": round((expected.total - expected.overhead) / 2**30, 2)}  # fmt: skip
        parts = activation_parts(settings_for(spec), shape(config))
        row["estimate_saved_activations_gib"] = round(parts.saved / 2**30, 2)
        if not cuda:
            row["measured"] = bench_fit.measure(case, config)
            rows.append(row)
            continue
        try:
            row.update(_measure_on_gpu(case, spec, config))
            row["ratio_estimate_to_peak"] = round(row["estimate_tensors_gib"] / row["peak_allocated_gib"], 3)
        except torch.cuda.OutOfMemoryError as error:
            row["out_of_memory"] = str(error).splitlines()[0]
        finally:
            torch.cuda.empty_cache()
        print(row, flush=True)
        rows.append(row)
    return {"cases": rows}


def _measure_on_gpu(case, spec, config) -> dict:
    """Peak allocated memory of one forward, backward and optimizer step on the GPU."""
    import torch
    import transformers

    from kubetune_trainer import methods

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    cfg = transformers.AutoConfig.for_model(**config)
    quantization = methods.bnb_config(spec.method) if spec.method.type == "qlora" else None
    dtype = torch.float32 if spec.method.type == "full" else torch.bfloat16
    if quantization is None:
        with torch.device("cuda"):
            model = transformers.AutoModelForCausalLM.from_config(
                cfg, dtype=dtype, attn_implementation="sdpa"
            )
    else:  # bitsandbytes quantizes while loading: save a random model once, load it quantized
        folder = Path(tempfile.mkdtemp(prefix="kubetune-fit-"))
        transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).save_pretrained(folder)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            folder, quantization_config=quantization, device_map={"": 0}, dtype=torch.bfloat16
        )
        shutil.rmtree(folder, ignore_errors=True)
    model, _kind = methods.apply_method(model, spec.method, spec.model,
                                        gradient_checkpointing=case.checkpointing)  # fmt: skip
    if case.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, fused=True)
    ids = torch.randint(0, config["vocab_size"], (case.batch, case.seq), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    del model, optimizer, loss
    return {"peak_allocated_gib": round(peak / 2**30, 2)}


def bench(size: str, dry_run: bool, json_path: Path) -> dict:
    """bf16 LoRA with packing vs the padded baseline (hack/bench_trainer.py), one run per side."""
    if dry_run:
        argv = [
            "--size",
            "tiny",
            "--texts",
            "48",
            "--max-length",
            "128",
            "--batch-size",
            "4",
            "--repeats",
            "1",
        ]
    elif size == "1b":
        argv = [
            "--size",
            "1b",
            "--texts",
            "1200",
            "--max-length",
            "2048",
            "--batch-size",
            "8",
            "--repeats",
            "1",
        ]
    else:  # 8b: ~16 GB of bf16 weights; batch 2 x 2048 keeps the padded baseline's activations in memory
        argv = [
            "--size",
            "8b",
            "--texts",
            "600",
            "--max-length",
            "2048",
            "--batch-size",
            "2",
            "--repeats",
            "1",
        ]
    bench_trainer.main([*argv, "--json", str(json_path)])
    return json.loads(json_path.read_text())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu-check-results", help="results folder")
    parser.add_argument(
        "--dry-run", action="store_true", help="tiny shapes, any device (the kit's own check)"
    )
    parser.add_argument(
        "--only", action="append", choices=["qlora", "bench-1b", "bench-8b", "fit"], default=None
    )
    parser.add_argument("--qlora-steps", type=int, default=40)
    args = parser.parse_args(argv)

    import torch

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        print("no GPU visible: use --dry-run for the kit's CPU check", file=sys.stderr)
        return 2
    steps = ["qlora", "bench-1b", "bench-8b", "fit"] if not args.dry_run else ["qlora", "bench-1b", "fit"]
    steps = [s for s in steps if not args.only or s in args.only]
    report = {"dry_run": args.dry_run, "versions": versions(), **device_facts(), "results": {}, "errors": {}}
    work = Path(tempfile.mkdtemp(prefix="kubetune-gpu-check-"))
    started = time.perf_counter()
    try:
        for step in steps:
            t0 = time.perf_counter()
            print(f"== {step}", flush=True)
            try:
                if step == "qlora":
                    quantized = cuda and not args.dry_run
                    size = "tiny" if args.dry_run else "1b"
                    steps_n = 6 if args.dry_run else args.qlora_steps
                    (work / step).mkdir()
                    result = qlora(work / step, size, steps_n, quantized)
                    if not quantized:
                        result["note"] = "LoRA instead of QLoRA: bitsandbytes 4-bit needs a GPU"
                elif step == "fit":
                    result = fit(args.dry_run)
                else:
                    result = bench(step.split("-")[1], args.dry_run, out / f"{step}.json")
                result["wall_s"] = round(time.perf_counter() - t0, 1)
                report["results"][step] = result
            except Exception as error:  # noqa: BLE001 - one failed step must not lose the others' figures
                traceback.print_exc()
                report["errors"][step] = f"{type(error).__name__}: {error}"
            finally:
                if cuda:
                    torch.cuda.empty_cache()
            report["wall_s"] = round(time.perf_counter() - started, 1)
            (out / "gpu-check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({k: v for k, v in report.items() if k != "results"}, indent=2, default=str))
    for step, result in report["results"].items():
        keys = ("loss_first", "loss_last3_mean", "loss_falls", "tokens_per_second", "peak_memory_gib",
                "merged_reloads_and_runs", "speedup_tokens_per_second")  # fmt: skip
        print(step, {k: result[k] for k in keys if k in result})
    print(f"results: {out / 'gpu-check.json'}")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
