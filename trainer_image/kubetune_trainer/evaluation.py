"""spec.evaluation: measure a model (the trained result, and the base model with compareWithBase) on held-out
data and lm-evaluation-harness tasks, then judge the gates (gate.py).

The task's metrics come from one plain loop over the evaluation data (no Trainer: it runs on the main process
alone, also in a distributed run): perplexity from the mean token loss; accuracy, f1, precision and recall
from the logits; rouge, bleu and exact-match from greedy generations of the held-out prompts. Metric names are
the gates' (perplexity, accuracy, ..., rouge1, rouge2, rougeL, bleu, exact-match), prefixed NAME/ for
evaluation.datasets; lm-eval tasks give TASK/METRIC (e.g. tiny_capitals/acc).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubetune.api.v1alpha1 import DatasetSpec, EvaluationStatus, MetricResult, ModelSpec, TrainerConfig

from . import gate as gate_mod
from . import metrics as metric_fns
from . import sources
from .errors import ConfigError

log = logging.getLogger("kubetune_trainer.evaluation")

LM_EVAL_METRIC_FILTER = ",none"  # lm-eval reports "acc,none": the metric under its default filter
REJECTED = "rejected"  # results that failed their gate are kept under OUTPUT/rejected/RUN_ID


@dataclass
class EvalSet:
    """One evaluation dataset, tokenized for the task, and its held-out prompts for generation metrics."""

    name: str | None
    """None: the job's own evaluation split (plain metric names); else evaluation.datasets[].name."""
    data: Any
    samples: list


@dataclass
class Measured:
    values: dict[str, float] = field(default_factory=dict)
    higher_is_better: dict[str, bool] = field(default_factory=dict)
    """Directions lm-eval reports for its metrics (TASK/METRIC)."""


# ------------------------------------------------------------------------------------------ data


def eval_sets(
    config: TrainerConfig, model_spec: ModelSpec, tokenizer, job_eval: Any, job_samples: list
) -> list[EvalSet]:
    """The data the gates are measured on: evaluation.datasets, else the job's evaluation split."""
    from . import data as data_mod

    spec = config.job.spec
    evaluation = spec.evaluation
    if evaluation is None or not evaluation.metrics:
        return []
    if not evaluation.datasets:
        if job_eval is None:
            raise ConfigError("evaluation.metrics need held-out data: the job has no evaluation split")
        return [EvalSet(None, job_eval, job_samples)]
    out = []
    for item in evaluation.datasets:
        dataset = DatasetSpec.model_validate(
            {
                **spec.dataset.model_dump(include={"max_length", "target_max_length", "source_prefix", "chat_template",
                                                   "mlm_probability", "doc_stride"}),
                "uri": item.uri,
                "config": item.config,
                "format": item.format,
                "train_split": item.split,
                "max_samples": item.max_samples,
                "secret_ref": spec.dataset.secret_ref,
            }
        )  # fmt: skip
        prepared = data_mod.prepare(dataset, model_spec, tokenizer, spec.training.seed)  # the task's own rows
        out.append(EvalSet(item.name, prepared.train, prepared.samples))
    return out


def _collator(task: str, tokenizer, model, mlm_probability: float):
    import transformers

    if task in ("causal-lm", "seq2seq"):
        return transformers.DataCollatorForSeq2Seq(tokenizer, model=model if task == "seq2seq" else None)
    if task == "token-classification":
        return transformers.DataCollatorForTokenClassification(tokenizer)
    if task == "masked-lm":
        return transformers.DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability)
    return transformers.DataCollatorWithPadding(tokenizer)


# ------------------------------------------------------------------------------------------ task metrics


def _loop(model, dataset, collator, batch_size: int, task: str) -> tuple[float, Any, Any]:
    """Mean loss per predicted token (per example for classification), and the predictions and labels of
    classification tasks."""
    import numpy as np
    import torch

    device = next(model.parameters()).device
    columns = [
        c for c in dataset.column_names if c in ("input_ids", "attention_mask", "token_type_ids", "labels")
    ]
    rows = dataset.select_columns(columns)
    total, count = 0.0, 0
    preds: list = []
    labels: list = []
    model.eval()
    torch.manual_seed(0)  # masked-lm: the same masks for the base and the result
    for start in range(0, len(rows), batch_size):
        batch = collator([rows[i] for i in range(start, min(start + batch_size, len(rows)))])
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.no_grad():
            out = model(**batch)
        target = batch["labels"]
        if task in ("causal-lm",):
            n = int((target[..., 1:] != -100).sum())
        elif task in ("seq2seq", "masked-lm", "token-classification"):
            n = int((target != -100).sum())
        else:
            n = int(target.shape[0])
        if n and out.loss is not None:
            total += float(out.loss) * n
            count += n
        if task in ("sequence-classification", "token-classification"):
            predicted = out.logits.argmax(dim=-1).cpu().numpy()
            truth = target.cpu().numpy()
            if task == "token-classification":
                mask = truth != -100
                preds.append(predicted[mask])
                labels.append(truth[mask])
            else:
                preds.append(predicted)
                labels.append(truth)
    joined = (np.concatenate(preds), np.concatenate(labels)) if preds else (None, None)
    return (total / count if count else float("nan")), joined[0], joined[1]


def _seq2seq_text(model, tokenizer, samples, names, max_new_tokens: int) -> dict[str, float]:
    import torch

    device = next(model.parameters()).device
    predictions, references = [], []
    for sample in samples[:32]:
        if not isinstance(sample.reference, str):
            continue
        inputs = tokenizer(sample.prompt, return_tensors="pt", truncation=True).to(device)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        predictions.append(tokenizer.decode(out[0], skip_special_tokens=True))
        references.append(sample.reference)
    return metric_fns.text_scores(predictions, references, names) if predictions else {}


def task_metrics(config: TrainerConfig, model, tokenizer, sets: list[EvalSet]) -> dict[str, float]:
    """The evaluation.metrics of MODEL on every set, named as the gates name them."""
    spec = config.job.spec
    evaluation = spec.evaluation
    assert evaluation is not None
    names = list(evaluation.metrics)
    task = spec.model.task
    collator = _collator(task, tokenizer, model, spec.dataset.mlm_probability)
    out: dict[str, float] = {}
    for item in sets:
        found: dict[str, float] = {}
        loss, preds, labels = _loop(model, item.data, collator, spec.training.batch_size, task)
        if "perplexity" in names:
            found["perplexity"] = float(math.exp(min(loss, 50.0)))
        if preds is not None and any(n in metric_fns.CLASSIFICATION for n in names):
            average = "macro" if task == "token-classification" else None
            found.update(
                metric_fns.classification_scores(preds, labels, names, spec.model.num_labels or 2, average)
            )
        if any(n in metric_fns.TEXT for n in names):
            if task == "causal-lm":
                from .objectives.sft import generation_scores

                text = {
                    k.removeprefix("eval_"): v
                    for k, v in generation_scores(model, tokenizer, item.samples, names).items()
                }
            else:
                text = _seq2seq_text(model, tokenizer, item.samples, names, spec.dataset.target_max_length)
            found.update({("exact-match" if k == "exact_match" else k): v for k, v in text.items()})
        prefix = f"{item.name}/" if item.name else ""
        out.update({prefix + k: float(v) for k, v in found.items()})
    return out


# ------------------------------------------------------------------------------------------ lm-eval


def task_dir(config: TrainerConfig) -> str | None:
    """The local folder of evaluation.lmEval.taskDir (a mounted claim, or a file:// path)."""
    evaluation = config.job.spec.evaluation
    uri = evaluation.lm_eval.task_dir if evaluation and evaluation.lm_eval else None
    return str(sources.local_path(uri)) if uri else None


def lm_eval_metrics(config: TrainerConfig, model, tokenizer) -> Measured:
    """evaluation.lmEval's tasks on MODEL (a transformers model: for adapters, the base with them active)."""
    spec = config.job.spec.evaluation
    if spec is None or spec.lm_eval is None or not spec.lm_eval.tasks:
        return Measured()
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    folder = task_dir(config)
    if folder is not None and not Path(folder).is_dir():
        raise ConfigError(f"evaluation.lmEval.taskDir: {folder} is not a folder")
    device = str(next(model.parameters()).device)
    backend = "seq2seq" if config.job.spec.model.task == "seq2seq" else "causal"
    lm = HFLM(pretrained=_transformers_model(model), tokenizer=tokenizer, backend=backend,
              batch_size=config.job.spec.training.batch_size, device=device)  # fmt: skip
    manager = TaskManager(include_path=folder, include_defaults=folder is None) if folder else TaskManager()
    # local task YAML names its data files relative to the task folder
    with _cwd(folder):
        results = simple_evaluate(
            model=lm,
            tasks=list(spec.lm_eval.tasks),
            task_manager=manager,
            limit=spec.lm_eval.limit,
            num_fewshot=spec.lm_eval.num_fewshot,
            log_samples=False,
            bootstrap_iters=0,
            random_seed=config.job.spec.training.seed,
        )
    if results is None:  # lm-eval returns None on processes other than rank 0
        return Measured()
    measured = Measured()
    for task, figures in (results.get("results") or {}).items():
        directions = (results.get("higher_is_better") or {}).get(task) or {}
        for key, value in figures.items():
            if (
                not key.endswith(LM_EVAL_METRIC_FILTER)
                or "_stderr" in key
                or not isinstance(value, int | float)
            ):
                continue
            metric = key[: -len(LM_EVAL_METRIC_FILTER)]
            measured.values[f"{task}/{metric}"] = float(value)
            if metric in directions:
                measured.higher_is_better[f"{task}/{metric}"] = bool(directions[metric])
    return measured


@contextlib.contextmanager
def _cwd(folder: str | None):
    if folder is None:
        yield
        return
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def _transformers_model(model):
    """The transformers model lm-eval can drive: a PEFT model's base with its adapters injected (and active)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


# ------------------------------------------------------------------------------------------ both


def measure(config: TrainerConfig, model, tokenizer, sets: list[EvalSet]) -> Measured:
    measured = lm_eval_metrics(config, model, tokenizer)
    measured.values.update(task_metrics(config, model, tokenizer, sets) if sets else {})
    return measured


@contextlib.contextmanager
def as_base(model):
    """MODEL as the base model: a PEFT model with its adapters off; anything else as it is (untrained)."""
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            yield model
    else:
        yield model


def status(config: TrainerConfig, result: Measured, base: Measured | None) -> tuple[EvaluationStatus, bool]:
    """status.evaluation for RESULT (and BASE) judged against the gates; and whether it passed."""
    spec = config.job.spec.evaluation
    assert spec is not None
    directions = {**(base.higher_is_better if base else {}), **result.higher_is_better}
    judgement = gate_mod.judge(spec.gates, result.values, base.values if base else None, directions)
    names = sorted(set(result.values) | set(base.values if base else ()))
    metrics = [
        MetricResult(
            name=n, result=_finite(result.values.get(n)), base=_finite(base.values.get(n)) if base else None
        )
        for n in names
    ]
    return (
        EvaluationStatus(
            passed=judgement.passed,
            metrics=metrics,
            gates=judgement.verdicts,
            message=judgement.message(),
            config_hash=config.runtime.run_id,
            finished_at=datetime.now(UTC).replace(microsecond=0),
        ),
        judgement.passed,
    )


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
