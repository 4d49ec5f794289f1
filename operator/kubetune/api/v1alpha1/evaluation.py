"""spec.evaluation of a FineTuneJob (the gate a result must pass before it is promoted), status.evaluation,
and status.estimate (the fit check's figures).

The trainer evaluates the result (and, with compareWithBase, the base model on the same data) after training,
writes status.evaluation and marks the result promoted or not; the operator ends a run whose result failed
its gate as Failed with reason EvaluationGateFailed, and a ModelServe serves only promoted results.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, JsonValue

from .common import KubeModel
from .uris import URIError, parse_uri

EvalMetric = Literal["accuracy", "f1", "precision", "recall", "rouge", "bleu", "perplexity", "exact-match"]
# What each evaluation metric reports (the names gates use): rouge gives three figures.
METRIC_RESULTS: dict[str, tuple[str, ...]] = {
    "accuracy": ("accuracy",),
    "f1": ("f1",),
    "precision": ("precision",),
    "recall": ("recall",),
    "rouge": ("rouge1", "rouge2", "rougeL"),
    "bleu": ("bleu",),
    "perplexity": ("perplexity",),
    "exact-match": ("exact-match",),
}
LOWER_IS_BETTER = ("perplexity", "loss")
DATASET_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# lm-evaluation-harness task names (letters, digits, _ - . and : as in its registry)
LM_EVAL_TASK = r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$"
GATE_METRIC = r"^[A-Za-z0-9][A-Za-z0-9_.:-]*(/[A-Za-z0-9][A-Za-z0-9_.,:-]*)?$"


DATASET_URI = r"^(hf|pvc|s3|https|file)://.+$"


def _dataset_uri(value: str) -> str:
    try:
        parse_uri(value, ("hf", "pvc", "s3", "https", "file"))
    except URIError as error:
        raise ValueError(str(error)) from None
    return value


class EvalDataset(KubeModel):
    """A dataset the result is evaluated on, besides (or instead of) the job's own evaluation split."""

    name: Annotated[str, Field(min_length=1, max_length=40, pattern=DATASET_NAME)]
    """Short name; its metrics are reported and gated as NAME/METRIC (e.g. support/perplexity)."""
    uri: Annotated[str, AfterValidator(_dataset_uri), Field(max_length=2048, pattern=DATASET_URI)]
    """hf://, pvc://, s3://, https:// (file:// for local runs): the same sources as dataset.uri."""
    format: Annotated[str, Field(min_length=1)] = "auto"
    """Its format (the values of dataset.format); auto detects it from the columns."""
    split: Annotated[str, Field(min_length=1)] = "train"
    """Split to evaluate on (a single file is one split, train)."""
    config: str | None = None
    """Hub dataset configuration name."""
    max_samples: Annotated[int | None, Field(ge=1)] = None
    """Evaluate at most this many rows."""


class LmEvalSpec(KubeModel):
    """lm-evaluation-harness tasks (the lm-eval package)."""

    tasks: Annotated[
        list[Annotated[str, Field(pattern=LM_EVAL_TASK, max_length=128)]], Field(max_length=16)
    ] = Field(default_factory=list)
    """Task (or group) names: lm-eval's own (they read their data from the Hub) or ones defined in taskDir."""
    task_dir: Annotated[str | None, Field(max_length=2048, pattern=r"^(pvc://|file:///).+")] = None
    """A folder of task YAML files and their local data (JSONL), pvc://CLAIM/PATH (file:/// locally): for
    clusters without the Hub, and for your own tasks."""
    limit: Annotated[int | None, Field(ge=1)] = None
    """Evaluate at most this many documents per task."""
    num_fewshot: Annotated[int | None, Field(ge=0)] = None
    """Few-shot examples per prompt (default: the task's)."""


class Gate(KubeModel):
    """A bound a metric of the result must keep; relative bounds compare with the base model."""

    metric: Annotated[str, Field(min_length=1, max_length=200, pattern=GATE_METRIC)]
    """A metric name: perplexity, accuracy, f1, precision, recall, bleu, exact-match, rouge1, rouge2, rougeL;
    DATASET/METRIC for evaluation.datasets; TASK/METRIC for lm-eval tasks (e.g. arc_easy/acc)."""
    min: float | None = None
    """The result must be at least this."""
    max: float | None = None
    """The result must be at most this (e.g. perplexity)."""
    max_regression: Annotated[float | None, Field(ge=0.0)] = None
    """The result may be worse than the base model by at most this fraction of the base's value (0.02 = 2%);
    needs compareWithBase."""
    min_improvement: Annotated[float | None, Field(ge=0.0)] = None
    """The result must be better than the base model by at least this fraction of the base's value
    (0.05 = 5%); needs compareWithBase."""


GATE_CEL: list[JsonValue] = [
    {
        "rule": "has(self.min) || has(self.max) || has(self.maxRegression) || has(self.minImprovement)",
        "message": "a gate needs a bound: set min, max, maxRegression or minImprovement",
    }
]


class EvaluationSpec(KubeModel):
    """Evaluate the result after training and promote it only when it passes its gates."""

    datasets: Annotated[list[EvalDataset], Field(max_length=8)] = Field(default_factory=list)
    """Datasets to evaluate on; empty: the job's evaluation split (dataset.evalSplit or evalFraction)."""
    metrics: Annotated[list[EvalMetric], Field(max_length=8)] = Field(default_factory=list)
    """The task's metrics: perplexity, rouge, bleu, exact-match (causal-lm, seq2seq); accuracy, f1, precision,
    recall (classification); perplexity (masked-lm); exact-match, f1 (question-answering)."""
    lm_eval: LmEvalSpec | None = None
    """lm-evaluation-harness tasks (causal-lm)."""
    compare_with_base: bool = False
    """Evaluate the base model on the same data too (status.evaluation shows both; relative gates need it)."""
    gates: Annotated[
        list[Annotated[Gate, Field(json_schema_extra={"x-kubernetes-validations": GATE_CEL})]],
        Field(max_length=16),
    ] = Field(default_factory=list)
    """Bounds the result must keep; a result that breaks one is kept but not promoted, and the run fails
    with reason EvaluationGateFailed."""


def gate_names(spec: EvaluationSpec) -> tuple[set[str], set[str]]:
    """The metric names EVALUATION reports (plain and DATASET/ prefixed), and its lm-eval task names."""
    produced = {name for metric in spec.metrics for name in METRIC_RESULTS[metric]}
    if spec.datasets:
        produced = {f"{d.name}/{name}" for d in spec.datasets for name in produced}
    return produced, set(spec.lm_eval.tasks if spec.lm_eval else ())


def evaluation_problems(
    spec: EvaluationSpec,
    task: str,
    task_metrics: tuple[str, ...],
    has_eval_split: bool,
    objective: str,
    formats: tuple[str, ...],
    in_cluster: bool,
    method: str = "lora",
) -> list[tuple[bool, str, str]]:
    """(broken, path, message) checks of spec.evaluation, in the shape FineTuneJobSpec.problems uses
    (FORMATS: the values of dataset.format; IN_CLUSTER: file:// URIs are refused)."""
    produced, tasks = gate_names(spec)
    wrong = [m for m in spec.metrics if m not in task_metrics]
    checks: list[tuple[bool, str, str]] = [
        (not spec.metrics and not tasks, "evaluation.metrics",
         "evaluation needs something to measure: set metrics or lmEval.tasks"),
        (bool(wrong), "evaluation.metrics",
         f"{', '.join(wrong)} {'does' if len(wrong) == 1 else 'do'} not apply to {task}; use {', '.join(task_metrics)}"),
        (bool(spec.metrics) and not spec.datasets and not has_eval_split, "evaluation.datasets",
         "the metrics need held-out data: set evaluation.datasets, or dataset.evalSplit or dataset.evalFraction"),
        (bool(tasks) and task not in ("causal-lm", "seq2seq"), "evaluation.lmEval",
         f"lm-evaluation-harness tasks evaluate text generators (causal-lm, seq2seq), not {task}"),
        (objective == "reward", "evaluation",
         "a reward model is not evaluated by these metrics; remove evaluation"),
        (bool(spec.metrics) and task == "question-answering", "evaluation.metrics",
         "question-answering results are not evaluated by the gate yet (training.metrics reports exact-match and "
         "f1); remove evaluation.metrics"),
        (bool(spec.metrics) and not spec.datasets and objective in ("dpo", "kto", "grpo", "rloo"), "evaluation.datasets",
         f"the job's own evaluation split holds {objective} data, not text to measure: set evaluation.datasets "
         "(text, prompt-completion, instruction or messages) or use lmEval"),
        (bool(tasks) and method in ("prefix-tuning", "prompt-tuning"), "evaluation.lmEval",
         f"lm-eval drives the model without {method}'s virtual tokens; use evaluation.metrics"),
        (len({d.name for d in spec.datasets}) != len(spec.datasets), "evaluation.datasets",
         "dataset names must be unique"),
    ]  # fmt: skip
    for i, data in enumerate(spec.datasets):
        checks += [
            (data.format not in formats, f"evaluation.datasets[{i}].format",
             f"{data.format!r} is not a dataset format; use one of {', '.join(formats)}"),
            (in_cluster and data.uri.startswith("file://"), f"evaluation.datasets[{i}].uri",
             "file:// works only with `kubetune train --local`; use hf://, pvc://, s3:// or https://"),
        ]  # fmt: skip
    task_dir = spec.lm_eval.task_dir if spec.lm_eval else None
    checks.append(
        (in_cluster and (task_dir or "").startswith("file://"), "evaluation.lmEval.taskDir",
         "file:// works only with `kubetune train --local`; use pvc://CLAIM/PATH")
    )  # fmt: skip
    for i, gate in enumerate(spec.gates):
        where = f"evaluation.gates[{i}]"
        relative = gate.max_regression is not None or gate.min_improvement is not None
        prefix = gate.metric.split("/", 1)[0]
        known = gate.metric in produced or ("/" in gate.metric and prefix in tasks)
        offered = sorted(produced) + [f"{t}/METRIC" for t in sorted(tasks)]
        bounded = any(v is not None for v in (gate.min, gate.max, gate.max_regression, gate.min_improvement))
        checks += [
            (not bounded, where, "a gate needs a bound: set min, max, maxRegression or minImprovement"),
            (relative and not spec.compare_with_base, "evaluation.gates",
             f"gates[{i}] ({gate.metric}): maxRegression and minImprovement compare with the base model: set "
             "evaluation.compareWithBase"),
            (not known, f"{where}.metric",
             f"{gate.metric} is not measured; use one of {', '.join(offered) or 'the metrics you set'}"),
            (gate.min is not None and gate.max is not None and gate.min > gate.max, f"{where}.min",
             f"min {gate.min} is above max {gate.max}: no result can pass"),
        ]  # fmt: skip
    return checks


EVALUATION_CEL: list[JsonValue] = [
    {
        "rule": "!has(self.evaluation) || self.evaluation.compareWithBase || "
        "self.evaluation.gates.all(g, !has(g.maxRegression) && !has(g.minImprovement))",
        "message": "evaluation.gates: maxRegression and minImprovement need evaluation.compareWithBase",
        "fieldPath": ".evaluation.gates",
    },
    {
        "rule": "!has(self.evaluation) || size(self.evaluation.metrics) > 0 || "
        "(has(self.evaluation.lmEval) && size(self.evaluation.lmEval.tasks) > 0)",
        "message": "evaluation needs something to measure: set evaluation.metrics or evaluation.lmEval.tasks",
        "fieldPath": ".evaluation.metrics",
    },
    {
        "rule": "!has(self.evaluation) || size(self.evaluation.metrics) == 0 || size(self.evaluation.datasets) > 0 "
        "|| has(self.dataset.evalSplit) || self.dataset.evalFraction > 0.0",
        "message": "evaluation.metrics need held-out data: set evaluation.datasets, or dataset.evalSplit or "
        "dataset.evalFraction",
        "fieldPath": ".evaluation.datasets",
    },
    {
        "rule": "!has(self.evaluation) || !has(self.evaluation.lmEval) || size(self.evaluation.lmEval.tasks) == 0 "
        "|| self.model.task in ['causal-lm', 'seq2seq']",
        "message": "evaluation.lmEval tasks evaluate text generators: model.task causal-lm or seq2seq",
        "fieldPath": ".evaluation.lmEval",
    },
    {
        "rule": "!has(self.evaluation) || !has(self.evaluation.lmEval) || !has(self.evaluation.lmEval.taskDir) "
        "|| !self.evaluation.lmEval.taskDir.startsWith('file://')",
        "message": "evaluation.lmEval.taskDir: file:// works only with `kubetune train --local`; use pvc://",
        "fieldPath": ".evaluation.lmEval.taskDir",
    },
]


def lower_is_better(metric: str) -> bool:
    name = metric.rsplit("/", 1)[-1]
    return bool(re.search(r"(perplexity|loss|bits_per_byte)$", name))


# ------------------------------------------------------------------------------------------ status


class MetricResult(KubeModel):
    """One measured metric of the result (and of the base model)."""

    name: str
    """perplexity, accuracy, ..., DATASET/METRIC or TASK/METRIC."""
    result: float | None = None
    """The fine-tuned result's value."""
    base: float | None = None
    """The base model's value (compareWithBase)."""


class GateVerdict(KubeModel):
    """How the result did against one gate."""

    metric: str
    """The gated metric."""
    passed: bool
    """Whether the result kept every bound of the gate."""
    message: str
    """The numbers: the result, the bound, the base model where relative."""


class EvaluationStatus(KubeModel):
    """The evaluation of the latest result (written by the trainer)."""

    passed: bool | None = None
    """Every gate passed (true with no gates); null while evaluating."""
    metrics: list[MetricResult] = Field(default_factory=list)
    """Each metric, result and base."""
    gates: list[GateVerdict] = Field(default_factory=list)
    """Each gate's verdict."""
    message: str | None = None
    """A summary: which gates failed, with the numbers."""
    config_hash: str | None = None
    """The run (status.result.configHash) this evaluation is of."""
    finished_at: datetime | None = None
    """When the evaluation ended."""


class EstimateBreakdown(KubeModel):
    """GiB per GPU by what uses them."""

    weights: float = 0.0
    """The model's parameters (and a reference model, adapters)."""
    gradients: float = 0.0
    """Gradients of the trainable parameters."""
    optimizer: float = 0.0
    """Optimizer state (AdamW: two moments; 8-bit: a quarter; Adafactor: factored)."""
    activations: float = 0.0
    """What the forward pass keeps for the backward pass, and the logits."""
    overhead: float = 0.0
    """CUDA context, workspaces and the allocator's slack."""


class EstimateStatus(KubeModel):
    """The fit check: peak GPU memory per GPU, estimated from the model's config.json before any pod starts."""

    per_gpu_gib: Annotated[float | None, Field(alias="perGpuGiB")] = None
    """Estimated peak memory of one GPU, in GiB."""
    breakdown: EstimateBreakdown | None = None
    """What the estimate is made of."""
    available_gib: Annotated[float | None, Field(alias="availableGiB")] = None
    """Memory of one GPU of the node type, in GiB (null: unknown)."""
    available_from: str | None = None
    """Where that figure comes from (a node label, resources.nodeSelector)."""
    fits: bool | None = None
    """Whether the estimate fits (null: unknown, or not checked)."""
    params: int | None = None
    """Parameters of the model."""
    trainable_params: int | None = None
    """Parameters the run trains."""
    model_type: str | None = None
    """config.json's model_type."""
    message: str | None = None
    """The estimate in words, and what would fit when it does not."""
    config_hash: str | None = None
    """The run (spec) the estimate is of."""
