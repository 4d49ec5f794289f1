"""Build the trainer for the objective and task: SFTTrainer / DPOTrainer (TRL), Trainer, Seq2SeqTrainer
(masked-lm and question-answering: Trainer with their collator and metrics from mlm.py and qa.py).

``training_arguments`` maps spec.training / spec.checkpoints to TrainingArguments keyword arguments;
extraArgs are merged last, as is.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from kubetune.api.v1alpha1 import FineTuneJobSpec

from . import metrics as metric_fns
from . import mlm, qa, rl
from .errors import ConfigError

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


def args_class(spec: FineTuneJobSpec):
    if rl.handles(spec):  # kto, reward, grpo, rloo
        return rl.args_class(spec)
    if spec.objective.type == "dpo":
        from trl import DPOConfig

        return DPOConfig
    if spec.model.task == "causal-lm":
        from trl import SFTConfig

        return SFTConfig
    if spec.model.task == "seq2seq":
        from transformers import Seq2SeqTrainingArguments

        return Seq2SeqTrainingArguments
    from transformers import TrainingArguments

    return TrainingArguments


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
    cls = args_class(spec)
    kwargs = dict(kwargs)
    names = {f.name for f in dataclasses.fields(cls)}
    if rl.handles(spec):
        kwargs.update(rl.objective_kwargs(spec))
    elif spec.objective.type == "dpo":
        kwargs.update(beta=spec.objective.dpo.beta, max_length=spec.dataset.max_length)
    elif spec.model.task == "causal-lm":
        kwargs.update(
            max_length=spec.dataset.max_length,
            packing=spec.dataset.packing,
            packing_strategy="bfd",  # best-fit packing; rows or one flattened row: use_packed_rows
            eval_packing=False,
            dataset_text_field="text",
        )
    elif spec.model.task == "seq2seq":
        generate = any(m in metric_fns.TEXT for m in spec.training.metrics)
        kwargs.update(predict_with_generate=generate, generation_max_length=spec.dataset.target_max_length)
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


def compute_metrics_for(spec: FineTuneJobSpec, tokenizer):
    names = spec.training.metrics
    task = spec.model.task
    if task == "sequence-classification":
        return metric_fns.sequence_classification(names, spec.model.num_labels or 2)
    if task == "token-classification":
        return metric_fns.token_classification(names, spec.model.num_labels or 2)
    if task == "seq2seq":
        return metric_fns.seq2seq(names, tokenizer)
    return None  # causal-lm: perplexity from eval_loss; text metrics by generation after training


def build_trainer(
    spec: FineTuneJobSpec, args, model, tokenizer, data, callbacks, ref_model=None, config=None
):
    """The trainer object for the objective and task (CONFIG: the TrainerConfig, for kto/reward/grpo/rloo)."""
    import transformers

    if rl.handles(spec):
        return rl.build_trainer(config, args, model, tokenizer, data, callbacks, ref_model=ref_model)

    compute_metrics = compute_metrics_for(spec, tokenizer)
    common = dict(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.eval,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    if spec.objective.type == "dpo":
        from trl import DPOTrainer

        return DPOTrainer(ref_model=ref_model, **common)
    task = spec.model.task
    if task == "causal-lm":
        from .sft_head import SFTTrainer  # TRL's, with a plain LM head where its fused one has no kernel

        trainer = SFTTrainer(**common)
        if args.packing:
            use_packed_rows(trainer, model)
        return trainer
    if task == "masked-lm":
        return mlm.build_trainer(spec, common, tokenizer)
    if task == "question-answering":
        return qa.build_trainer(spec, common, tokenizer, data)
    if task == "seq2seq":
        collator = transformers.DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)
        return transformers.Seq2SeqTrainer(data_collator=collator, compute_metrics=compute_metrics, **common)
    padding: transformers.DataCollatorForTokenClassification | transformers.DataCollatorWithPadding
    if task == "token-classification":
        padding = transformers.DataCollatorForTokenClassification(tokenizer)
    else:
        padding = transformers.DataCollatorWithPadding(tokenizer)
    return transformers.Trainer(data_collator=padding, compute_metrics=compute_metrics, **common)


def use_packed_rows(trainer, model) -> bool:
    """Packed bins as rows of at most maxLength tokens (per-document position ids, no attention mask) instead of
    TRL's one flattened row, unless flash-attention (varlen kernels) or a model that cannot keep packed documents
    apart by position ids (see packing.py). SFTTrainer refuses a custom collator with padding-free packing, so
    the collator is swapped after construction; dataloaders read trainer.data_collator when they are built."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from . import packing

    current = trainer.data_collator
    if type(current) is not DataCollatorForLanguageModeling or not current.padding_free:
        return False
    attention = packing.attn_implementation(model)
    if "flash" in attention:
        return False  # flash-attention's varlen kernels keep TRL's flattened documents apart
    # with a cache, masking_utils ignores packed position ids
    if getattr(trainer.args, "use_cache", False) or not packing.packs_rows(model):
        raise ConfigError(
            f"dataset.packing: this model ({type(model).__name__}, attention {attention}) would let packed examples "
            "attend to each other: it keeps them apart only with flash-attention. Set dataset.packing: false, "
            "or use a model that takes position_ids (Llama, Mistral, Qwen, GPT-2, ...)"
        )
    trainer.data_collator = packing.RowPackedCollator(
        pad_token_id=current.pad_token_id, pad_to_multiple_of=current.pad_to_multiple_of
    )
    return True


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
