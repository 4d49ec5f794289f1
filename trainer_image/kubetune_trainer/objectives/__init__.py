"""The objectives of the trainer: one module each (sft.py, dpo.py, kto.py, reward.py, grpo.py, rloo.py), and
what every objective's trainer shares.

The registry finds the modules of this package that define ``OBJECTIVE`` (objectives/base.py says what one
is); each registers against the entry of its name in the API's table (kubetune.api.v1alpha1.OBJECTIVES), and
tests/unit/test_objective_registry.py checks that the two match one to one. Adding an objective is one module
here plus its entry in the table: nothing in this file or in train.py names an objective.

``training_arguments`` maps spec.training / spec.checkpoints to TrainingArguments keyword arguments; the
objective adds its own (``build_args``); extraArgs are merged last, as is.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import sys
from functools import cache
from typing import Any

from kubetune.api.v1alpha1 import FineTuneJobSpec, TrainerConfig

from ..errors import ConfigError
from .base import Objective, TrainerInputs

SCHEDULERS = {
    "linear": "linear",
    "cosine": "cosine",
    "constant": "constant",
    "constant-with-warmup": "constant_with_warmup",
    "polynomial": "polynomial",
}
OPTIMIZERS = {
    "adamw": "adamw_torch_fused",  # transformers' default: one kernel for all parameters (CPU and GPU)
    "adafactor": "adafactor",
    "adamw-8bit": "adamw_bnb_8bit",
    "paged-adamw-8bit": "paged_adamw_8bit",
}


@cache
def registry() -> dict[str, Objective]:
    """name -> the objective of each module of this package that defines OBJECTIVE (named after the module)."""
    found: dict[str, Objective] = {}
    for info in pkgutil.iter_modules(__path__):
        objective = getattr(importlib.import_module(f"{__name__}.{info.name}"), "OBJECTIVE", None)
        if objective is None:
            continue
        if objective.name != info.name:
            raise ConfigError(
                f"objectives/{info.name}.py defines objective {objective.name!r}: name the module after it"
            )
        found[objective.name] = objective
    return found


def get(name: str) -> Objective:
    """The objective NAME (objective.type)."""
    try:
        return registry()[name]
    except KeyError:
        raise ConfigError(
            f"objective.type {name}: this trainer has no module for it (kubetune_trainer/objectives/{name}.py); "
            f"it trains {', '.join(registry())}"
        ) from None


def for_spec(spec: FineTuneJobSpec) -> Objective:
    return get(spec.objective.type)


def training_arguments(
    spec: FineTuneJobSpec, checkpoints_dir: str, precision: str, *, has_eval: bool, use_cpu: bool
) -> dict[str, Any]:
    """TrainingArguments kwargs from the spec (the caller picks the class with args_class)."""
    t = spec.training
    if spec.training.optimizer in ("adamw-8bit", "paged-adamw-8bit") and use_cpu:
        raise ConfigError(f"training.optimizer {t.optimizer} needs a GPU (bitsandbytes); use adamw on CPU")
    kwargs: dict[str, Any] = {
        "output_dir": checkpoints_dir,
        "num_train_epochs": t.epochs,
        "max_steps": t.max_steps if t.max_steps is not None else -1,
        "learning_rate": t.learning_rate,
        "per_device_train_batch_size": t.batch_size,
        "per_device_eval_batch_size": t.batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "lr_scheduler_type": SCHEDULERS[t.scheduler],
        "warmup_steps": t.warmup_steps if t.warmup_steps is not None else t.warmup_ratio,
        "weight_decay": t.weight_decay,
        "optim": OPTIMIZERS[t.optimizer],
        "max_grad_norm": t.max_grad_norm,
        "seed": t.seed,
        "data_seed": t.seed,
        "bf16": precision == "bf16",
        "fp16": precision == "fp16",
        "gradient_checkpointing": t.gradient_checkpointing,
        "gradient_checkpointing_kwargs": {"use_reentrant": False} if t.gradient_checkpointing else None,
        "save_strategy": "steps",
        "save_steps": spec.checkpoints.every_steps,
        "save_total_limit": spec.checkpoints.keep_last,
        "logging_steps": 1 if (t.max_steps or 0) and t.max_steps <= 50 else 10,
        "logging_first_step": True,
        "report_to": [],
        "use_cpu": use_cpu,
        "dataloader_num_workers": 0,
        "disable_tqdm": not sys.stderr.isatty(),
        "include_num_input_tokens_seen": True,
    }
    if has_eval:
        if t.eval_every == "epoch":
            kwargs["eval_strategy"] = "epoch"
        else:
            kwargs["eval_strategy"] = "steps"
            kwargs["eval_steps"] = t.eval_every
    else:
        kwargs["eval_strategy"] = "no"
    if t.early_stopping is not None:
        if not has_eval:
            raise ConfigError(
                "training.earlyStopping needs an evaluation set: set dataset.evalSplit or evalFraction"
            )
        metric = t.early_stopping.metric
        kwargs["load_best_model_at_end"] = True
        kwargs["metric_for_best_model"] = metric
        kwargs["greater_is_better"] = t.early_stopping.greater_is_better
        # load_best_model_at_end needs checkpoints at evaluation points
        if t.eval_every == "epoch":
            kwargs["save_strategy"] = "epoch"  # the checkpoint callback still saves every everySteps
        elif spec.checkpoints.every_steps % t.eval_every:
            kwargs["save_steps"] = t.eval_every
    return kwargs


def build_args(spec: FineTuneJobSpec, kwargs: dict[str, Any], tokenizer=None):
    """The objective's config class built from KWARGS (training_arguments), its own arguments and extraArgs."""
    objective = for_spec(spec)
    cls = objective.config_class(spec)
    kwargs = {**kwargs, **objective.config_kwargs(spec)}
    names = {f.name for f in dataclasses.fields(cls)}
    extra = spec.training.extra_args or {}
    unknown = sorted(k for k in extra if k not in names)
    if unknown:
        raise ConfigError(
            f"training.extraArgs: {', '.join(unknown)} is not an argument of {cls.__name__} "
            "(see transformers TrainingArguments)"
        )
    kwargs.update(extra)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"training settings rejected by {cls.__name__}: {error}") from None


def build_trainer(
    spec: FineTuneJobSpec,
    args,
    model,
    tokenizer,
    data,
    callbacks,
    ref_model=None,
    config: TrainerConfig | None = None,
):
    """The trainer object of the spec's objective (CONFIG: the TrainerConfig, for the chain's reward models)."""
    inputs = TrainerInputs(spec, args, model, tokenizer, data, list(callbacks), ref_model, config)
    return for_spec(spec).build(inputs)


def without_raw_log_printing(trainer) -> None:
    """Stop the Trainer printing its raw log dicts (kubetune's console lines say the same); keep its bar."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    class BarOnly(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            return None

    trainer.remove_callback(PrinterCallback)
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(BarOnly())


def early_stopping_callbacks(spec: FineTuneJobSpec) -> list:
    if spec.training.early_stopping is None:
        return []
    from transformers import EarlyStoppingCallback

    return [EarlyStoppingCallback(early_stopping_patience=spec.training.early_stopping.patience)]
