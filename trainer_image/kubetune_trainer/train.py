"""One training run from a TrainerConfig: data, model, method, objective, checkpoints, artifacts, reporting.

What differs between objectives is asked of the spec's objective (kubetune_trainer/objectives): this module
names none."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubetune.api.v1alpha1 import PEFT_METHODS, TrainerConfig

from . import (
    artifacts,
    chain,
    checkpoints,
    gatekeeper,
    methods,
    objectives,
    publish,
    remote,
    reporting,
    stall,
    tracking,
    world,
)
from . import data as data_mod
from . import metrics as metric_fns
from . import model as model_mod
from .errors import Preempted

log = logging.getLogger("kubetune_trainer.train")


@dataclass
class Outcome:
    result: dict
    metrics: dict[str, float]
    model: Any = None
    tokenizer: Any = None
    data: Any = None
    trainer: Any = None
    extra: dict = field(default_factory=dict)


def _dtype_for(spec, precision: str):
    import torch

    if spec.method.type == "qlora":
        return methods.torch_dtype(spec.method.quantization.compute_dtype)
    adapter = spec.method.type in PEFT_METHODS
    if adapter and precision == "bf16" and torch.cuda.is_available():
        return torch.bfloat16
    if adapter and precision == "fp16":
        return torch.float16
    return torch.float32  # full fine-tuning keeps fp32 master weights; bf16/fp16 come from autocast


def run(config: TrainerConfig) -> dict:
    """Train as the config says and return the result (ResultStatus JSON); raises Preempted on SIGTERM."""
    return run_training(config).result


def run_training(
    config: TrainerConfig, stop_flag: checkpoints.StopFlag | None = None, extra_callbacks: list | None = None
) -> Outcome:
    from transformers import set_seed

    spec = config.job.spec
    runtime = config.runtime
    started_at = datetime.now(UTC)
    set_seed(spec.training.seed)
    Path(runtime.output_dir).mkdir(parents=True, exist_ok=True)
    artifacts.clear_marker(runtime.output_dir)

    precision = model_mod.resolve_precision(spec.training.precision)
    use_cpu = not model_mod.cuda_available()
    objective = objectives.for_spec(spec)
    # model.fineTuneJobRef: the base the operator resolved (chain.py), with the outputs the objective implies
    model_spec = objective.model_spec(chain.base_model_spec(config))
    source = model_mod.resolve_source(model_spec)
    tokenizer = model_mod.load_tokenizer(model_spec, source)
    prepared = data_mod.prepare(spec.dataset, model_spec, tokenizer, spec.training.seed, objective)
    log.info(
        "dataset %s: format %s, %d training rows, digest %s",
        spec.dataset.uri,
        prepared.format,
        prepared.rows,
        prepared.digest,
    )

    dtype = _dtype_for(spec, precision)
    quantization = methods.bnb_config(spec.method) if spec.method.type == "qlora" else None
    device_map = {"": int(os.environ.get("LOCAL_RANK", "0"))} if quantization is not None else None

    def load_base(quantized: bool = True):
        base = model_mod.load_model(
            model_spec,
            source,
            dtype=dtype,
            label_names=prepared.label_names,
            quantization_config=quantization if quantized else None,
            device_map=device_map if quantized else None,
        )
        if base.config.pad_token_id is None and tokenizer.pad_token_id is not None:
            base.config.pad_token_id = tokenizer.pad_token_id
        return chain.merge_adapters(base, chain.parent_adapters(config))  # an adapter chain: merged first

    model = load_base()
    model, kind = methods.apply_method(
        model,
        spec.method,
        model_spec,
        gradient_checkpointing=spec.training.gradient_checkpointing,
        tokenizer_path=source.path,
        revision=source.revision,
    )
    trainable, total = methods.count_parameters(model)
    log.info(
        "method %s: %d of %d parameters trainable (%.2f%%)",
        spec.method.type,
        trainable,
        total,
        100.0 * trainable / max(1, total),
    )
    # spec.evaluation: the base model is measured before the first step (gatekeeper.py)
    gate = (
        gatekeeper.Gatekeeper(config, model_spec, tokenizer, prepared.eval, prepared.samples)
        if spec.evaluation
        else None
    )
    if gate is not None:
        gate.measure_base(model)
    ref_model = None
    if objective.needs_reference_model(kind):
        ref_model = load_base().eval()

    checkpoints.clean_foreign(runtime.output_dir, runtime.run_id)
    resume = checkpoints.latest_complete(runtime.output_dir, runtime.run_id)
    store = remote.for_output(artifacts.storage_uri(config))  # s3://: checkpoints are mirrored there
    if resume is None and store is not None:
        resume = remote.restore(store, runtime.output_dir, runtime.run_id)
    if resume is not None:
        log.info("resuming from %s", resume)

    flag = stop_flag or checkpoints.StopFlag()
    restore_signal = checkpoints.install_sigterm(flag)

    def on_checkpoint(path: str, step: int) -> None:
        rel = Path(path).relative_to(runtime.output_dir).as_posix()
        uri = artifacts.result_uri(config, rel)
        if store is not None:
            pushed = remote.push(store, Path(path), runtime.run_id, spec.checkpoints.keep_last)
            if pushed is None:
                return
            uri = pushed
        reporting.report_checkpoint(config, uri, step)  # reporting: status.checkpoint

    callbacks = list(reporting.make_callbacks(config))  # reporting: progress to status + Prometheus / console
    checkpoint_callback = checkpoints.CheckpointCallback(
        runtime.run_id, spec.checkpoints.every_steps, flag, on_checkpoint
    )
    callbacks += [checkpoint_callback, *objectives.early_stopping_callbacks(spec), *(extra_callbacks or [])]
    callbacks += stall.callbacks(config)  # no step for training.stallTimeoutSeconds: end the attempt

    kwargs = objectives.training_arguments(
        spec,
        str(checkpoints.checkpoint_dir(runtime.output_dir)),
        precision,
        has_eval=prepared.eval is not None,
        use_cpu=use_cpu,
    )
    kwargs.update(tracking.prepare(config))  # spec.tracking: TensorBoard, MLflow, W&B through report_to
    args = objectives.build_args(spec, kwargs, tokenizer)
    trainer = objectives.build_trainer(
        spec, args, model, tokenizer, prepared, callbacks, ref_model=ref_model, config=config
    )
    if not config.runtime.report_status:  # local: reporting prints one line per logging step
        objectives.without_raw_log_printing(trainer)
    world.check_world_size(trainer.args.world_size)  # never train alone in a world launched for several
    if trainer.args.world_size > 1:
        log.info("world size %d (rank %d)", trainer.args.world_size, trainer.args.process_index)
    try:
        train_output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    finally:
        restore_signal()
    if flag.is_set():
        raise Preempted(
            f"stopped after SIGTERM at step {trainer.state.global_step}; the checkpoint there is resumed on restart"
        )

    metrics = dict(train_output.metrics)
    if prepared.eval is not None:
        metrics.update(trainer.evaluate())
    names = spec.training.metrics
    if "perplexity" in names and prepared.eval is not None:
        metrics.update(metric_fns.perplexity(metrics))
    elif "perplexity" in names:
        metrics.update(metric_fns.training_perplexity(trainer.state.log_history, metrics))
        log.warning(
            "no evaluation set: train_perplexity %.4g is the training perplexity (exp of the last logged training "
            "loss), not a held-out score; set dataset.evalSplit or dataset.evalFraction for eval_perplexity",
            metrics.get("train_perplexity", float("nan")),
        )
    metrics.update(objective.final_metrics(trainer, tokenizer, prepared, spec))  # sft: causal-lm text metrics
    metrics = artifacts.numeric(metrics)

    verdict = gate.judge(trainer.model) if gate is not None else None
    # a result that failed its gate is kept beside the output, not in place of the promoted one
    saved_config = gatekeeper.result_config(config, verdict.passed) if verdict is not None else config
    result: dict = {}
    world_facts = world.world_facts(trainer)  # collective: every rank
    artifacts.save_weights(trainer, saved_config.runtime.output_dir)
    if trainer.is_world_process_zero():
        result = artifacts.save(
            saved_config,
            trainer,
            tokenizer,
            kind=kind,
            result_kind=objective.result_kind(kind),
            metrics=metrics,
            base_revision=model_mod.resolved_revision(source),
            dataset_digest=prepared.digest,
            started_at=started_at,
            base_loader=lambda: load_base(quantized=False),
            precision=precision,
            distributed=world_facts.to_dict(),
            evaluation=verdict.status if verdict is not None else None,
        )
        result = publish.publish(saved_config, result)  # oci:// output: push; output.register: model registry
        reporting.report_result(config, result)  # reporting: status.result
    return Outcome(result, metrics, trainer.model, tokenizer, prepared, trainer)
