"""FineTuneJob: fine-tune a base model on a dataset with one method and objective."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    JsonValue,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .common import (
    TARGET_CLUSTER,
    Condition,
    EnvVar,
    KubeModel,
    LocalObjectReference,
    ObjectMeta,
    Problem,
    Quantity,
    SecretKeyRef,
    Toleration,
    raise_problems,
)
from .evaluation import EVALUATION_CEL, EstimateStatus, EvaluationSpec, EvaluationStatus, evaluation_problems
from .objective import (
    OBJECTIVE_SPEC_CEL,
    ObjectiveSpec,
    default_by_rules,
    implied_task,
    implied_task_cel,
    objective_problems,
)
from .publishing import PUBLISHING_CEL, PublishError, RegisteredModel, RegisterSpec, publishing_problems
from .tracking import TRACKING_CEL, TrackingSpec, tracking_problems
from .uris import OCI_DIGEST, OCI_HOST, OCI_REPOSITORY, OCI_TAG, URIError, parse_uri

Task = Literal[
    "causal-lm", "seq2seq", "sequence-classification", "token-classification", "masked-lm", "question-answering"
]  # fmt: skip
# Encoder tasks without generation: prefix/prompt tuning and text-generation servers do not apply.
ENCODER_TASKS = ("masked-lm", "question-answering")
DatasetFormat = Literal[
    "auto",
    "text",
    "prompt-completion",
    "instruction",
    "messages",
    "classification",
    "seq2seq",
    "preference",
    "token-tags",
    "question-answering",
    "prompt",
    "unpaired-preference",
]
ColumnKey = Literal[
    "text", "label", "prompt", "completion", "instruction", "input", "output", "messages",
    "source", "target", "chosen", "rejected", "tokens", "tags", "question", "context", "answers",
]  # fmt: skip
MethodType = Literal["full", "head-only", "lora", "qlora", "prefix-tuning", "prompt-tuning", "ia3"]
ADAPTER_METHODS = ("lora", "qlora", "ia3")  # methods whose adapter can be merged into the base
PEFT_METHODS = (*ADAPTER_METHODS, "prefix-tuning", "prompt-tuning")  # methods that train PEFT weights only
Scheduler = Literal["linear", "cosine", "constant", "constant-with-warmup", "polynomial"]
Optimizer = Literal["adamw", "adafactor", "adamw-8bit", "paged-adamw-8bit"]
Precision = Literal["auto", "bf16", "fp16", "fp32"]
Metric = Literal["accuracy", "f1", "precision", "recall", "rouge", "bleu", "perplexity", "exact-match"]
CLASSIFICATION_METRICS = ("accuracy", "f1", "precision", "recall")
GENERATION_METRICS = ("rouge", "bleu", "perplexity", "exact-match")
TASK_METRICS = {
    "sequence-classification": CLASSIFICATION_METRICS,
    "token-classification": CLASSIFICATION_METRICS,
    "causal-lm": GENERATION_METRICS,
    "seq2seq": GENERATION_METRICS,
    "masked-lm": ("perplexity",),
    "question-answering": ("exact-match", "f1"),  # SQuAD's, over the predicted answer spans
}
TRAINING_SET_METRICS = ("perplexity",)  # computable from the training loss when there is no evaluation set
Strategy = Literal["auto", "ddp", "fsdp", "deepspeed"]
ResultKind = Literal["adapter", "full", "prefix", "prompt", "masked-lm", "question-answering", "reward-model"]

MODEL_SCHEMES = ("hf", "pvc", "s3", "oci", "file")
DATASET_SCHEMES = ("hf", "pvc", "s3", "https", "file")
OUTPUT_SCHEMES = ("pvc", "s3", "oci", "file")
CHECKPOINT_SCHEMES = ("pvc", "s3", "file")


def _uri_validator(allowed: tuple[str, ...]):
    def check(value: str | None) -> str | None:
        if value is not None:
            try:
                parse_uri(value, allowed)
            except URIError as error:
                raise ValueError(str(error)) from None
        return value

    return check


# The shape of each scheme as an RE2 pattern for the CRD (the API server checks it); Python checks
# the same shapes (and more: '..' in pvc paths, SSRF hosts) in parse_uri with friendlier messages.
_SCHEME_PATTERNS = {
    "hf": r"hf:///*[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?/*",
    "pvc": r"pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*(/.*)?",
    "s3": r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?",
    "oci": rf"oci://{OCI_HOST}/{OCI_REPOSITORY}(:{OCI_TAG}(@({OCI_DIGEST}))?|@({OCI_DIGEST}))",
    "https": r"https://[^/?#]+([/?#].*)?",
    "file": r"file:///.*",
}
URI_MAX_LENGTH = 2048


def _uri_pattern(allowed: tuple[str, ...]) -> str:
    return "^(" + "|".join(_SCHEME_PATTERNS[s] for s in allowed) + ")$"


def _uri_type(allowed: tuple[str, ...]) -> Any:
    """A URI string: length checked first, then parse_uri's rules; the pattern goes to the CRD only."""
    return Annotated[
        str,
        Field(max_length=URI_MAX_LENGTH),
        AfterValidator(_uri_validator(allowed)),
        Field(json_schema_extra={"pattern": _uri_pattern(allowed)}),
    ]


if TYPE_CHECKING:  # to a type checker they are strings; pydantic gets the checks
    ModelURI = str
    DatasetURI = str
    OutputURI = str
    CheckpointURI = str
else:
    ModelURI = _uri_type(MODEL_SCHEMES)
    DatasetURI = _uri_type(DATASET_SCHEMES)
    OutputURI = _uri_type(OUTPUT_SCHEMES)
    CheckpointURI = _uri_type(CHECKPOINT_SCHEMES)
PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]


class ModelSpec(KubeModel):
    """The base model to fine-tune."""

    model_config = KubeModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.uri) != has(self.fineTuneJobRef)",
                    "message": "set exactly one of model.uri and model.fineTuneJobRef",
                    "fieldPath": ".uri",
                }
            ]
        }
    }

    uri: ModelURI | None = None
    """Where the base model comes from: hf://ORG/NAME, pvc://CLAIM/PATH, s3://BUCKET/PREFIX or an OCI model
    artifact oci://REGISTRY/REPOSITORY:TAG (or @sha256:DIGEST); exclusive with fineTuneJobRef."""
    fine_tune_job_ref: LocalObjectReference | None = None
    """Start from another FineTuneJob's result (same namespace) instead of uri: its merged or full model, or its
    adapter merged into that job's base. The job waits (condition WaitingForModel) until that one Succeeded."""
    revision: Annotated[str | None, Field(min_length=1)] = "main"
    """Hub branch, tag or commit (hf:// only); the resolved commit is recorded in status.result."""
    task: Task = Field("causal-lm", json_schema_extra=default_by_rules)
    """What the model learns: causal-lm, seq2seq, sequence-classification, token-classification, masked-lm or
    question-answering. Left out, it is the task the objective trains (reward: sequence-classification with one
    output), else causal-lm."""
    num_labels: Annotated[int | None, Field(ge=1)] = None
    """Number of classes; required for sequence-classification and token-classification."""
    labels: list[str] | None = None
    """Optional class names (id2label), one per label; the length must equal numLabels."""
    trust_remote_code: bool = False
    """Run model code from the model repository (only for models you trust)."""
    secret_ref: SecretKeyRef | None = None
    """Secret with a Hub token (key defaults to HF_TOKEN) or S3 credentials for a private model; for oci:// a
    kubernetes.io/dockerconfigjson Secret (as image pull secrets are)."""

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if (self.uri is None) == (self.fine_tune_job_ref is None):
            both = self.uri is not None
            raise_problems(
                [
                    Problem(
                        "uri",
                        "uri and fineTuneJobRef are exclusive: set one of them"
                        if both
                        else "required: set uri (hf://, pvc://, s3://) or fineTuneJobRef (another FineTuneJob)",
                    )
                ]
            )
        return self


class DatasetSpec(KubeModel):
    """The training data."""

    uri: DatasetURI
    """hf://ORG/NAME, pvc://CLAIM/PATH (jsonl, json, csv, parquet or a saved datasets folder), s3://BUCKET/PREFIX or a public https:// URL."""
    config: str | None = None
    """Hub dataset configuration name, e.g. "3.0.0" for cnn_dailymail."""
    format: DatasetFormat = "auto"
    """How rows are turned into training examples; auto detects it from the column names."""
    columns: dict[ColumnKey, str] = Field(default_factory=dict)
    """Rename map from kubetune's column names to the dataset's, e.g. {text: review, label: sentiment}."""
    train_split: Annotated[str, Field(min_length=1)] = "train"
    """Split used for training."""
    eval_split: Annotated[str | None, Field(min_length=1)] = None
    """Split used for evaluation; exclusive with evalFraction."""
    eval_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    """Fraction of the training split held out for evaluation (0 <= x < 1); exclusive with evalSplit."""
    max_samples: Annotated[int | None, Field(ge=1)] = None
    """Use at most this many training rows (for smoke runs)."""
    max_length: PositiveInt = 512
    """Maximum tokens per example (the source, for seq2seq)."""
    target_max_length: PositiveInt = 128
    """Maximum target tokens for seq2seq."""
    source_prefix: str = ""
    """Text put before every source for seq2seq, e.g. "summarize: " for T5."""
    packing: bool = False
    """Pack several examples into each sequence without padding (causal-lm only)."""
    chat_template: str | None = None
    """Jinja chat template that overrides the tokenizer's for the messages format."""
    secret_ref: SecretKeyRef | None = None
    """Secret with a Hub token or S3 credentials for a private dataset."""
    mlm_probability: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.15
    """masked-lm only: fraction of tokens masked for the model to predict (0 < x < 1)."""
    doc_stride: PositiveInt = 128
    """question-answering only: tokens shared by consecutive windows of a context longer than maxLength."""


class LoraSpec(KubeModel):
    """LoRA settings (lora and qlora)."""

    r: PositiveInt = 16
    """Rank of the update matrices."""
    alpha: Annotated[float, Field(gt=0)] = 32
    """Scaling factor (lora_alpha)."""
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.05
    """Dropout on the LoRA path."""
    target_modules: Annotated[
        Literal["all-linear"] | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)],
        Field(json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}),
    ] = "all-linear"
    """Modules that get adapters: "all-linear" or a list of module names such as [q_proj, v_proj]."""
    bias: Literal["none", "all", "lora_only"] = "none"
    """Which biases are trained."""


class QuantizationSpec(KubeModel):
    """How the frozen base model is quantized (qlora only)."""

    bits: Literal[4, 8] = 4
    """4 or 8 bits."""
    type: Literal["nf4", "fp4"] = "nf4"
    """4-bit data type."""
    double_quant: bool = True
    """Quantize the quantization constants too (saves about 0.4 bits per parameter)."""
    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    """Data type of the matrix multiplications."""


class PrefixTuningSpec(KubeModel):
    """Prefix tuning settings."""

    num_virtual_tokens: PositiveInt = 20
    """Number of virtual tokens prepended at every layer."""


class PromptTuningSpec(KubeModel):
    """Prompt tuning settings."""

    num_virtual_tokens: PositiveInt = 20
    """Number of virtual tokens prepended to the input."""
    init_text: Annotated[str | None, Field(min_length=1)] = None
    """Initialize the virtual tokens from this text instead of randomly."""


class HeadOnlySpec(KubeModel):
    """Head-only settings: everything is frozen except these modules."""

    trainable: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] = Field(
        default_factory=lambda: ["classifier"]
    )
    """Module-name patterns that stay trainable (e.g. classifier, score, lm_head); with masked-lm and
    question-answering the default [classifier] stands for the task's head (cls or lm_head; qa_outputs)."""
    unfreeze_last_layers: NonNegativeInt = 0
    """Also train this many of the last transformer layers."""


class MethodSpec(KubeModel):
    """How the model is adapted."""

    type: MethodType = "lora"
    """full, head-only, lora, qlora, prefix-tuning, prompt-tuning or ia3."""
    lora: LoraSpec = Field(default_factory=LoraSpec)
    """LoRA settings (lora and qlora)."""
    quantization: QuantizationSpec = Field(default_factory=QuantizationSpec)
    """Quantization of the frozen base (qlora only)."""
    prefix_tuning: PrefixTuningSpec = Field(default_factory=PrefixTuningSpec)
    """Prefix tuning settings."""
    prompt_tuning: PromptTuningSpec = Field(default_factory=PromptTuningSpec)
    """Prompt tuning settings."""
    head_only: HeadOnlySpec = Field(default_factory=HeadOnlySpec)
    """Head-only settings."""


class EarlyStoppingSpec(KubeModel):
    """Stop when the evaluation metric stops improving."""

    patience: PositiveInt = 3
    """Evaluations without improvement before stopping."""
    metric: Annotated[str, Field(min_length=1)] = "eval_loss"
    """Metric to watch, e.g. eval_loss or eval_accuracy."""
    greater_is_better: bool = False
    """Whether a larger metric is better."""


EvalEvery = Annotated[
    Literal["epoch"] | Annotated[int, Field(ge=1)],
    Field(json_schema_extra={"x-kubernetes-int-or-string": True}),
]


class TrainingSpec(KubeModel):
    """Training hyperparameters."""

    epochs: Annotated[float, Field(gt=0)] = 3
    """Passes over the training data."""
    max_steps: Annotated[int | None, Field(ge=1)] = None
    """Stop after this many optimizer steps; overrides epochs."""
    learning_rate: Annotated[float, Field(gt=0, le=1)] = 2.0e-5
    """Peak learning rate."""
    batch_size: PositiveInt = 8
    """Examples per device per step."""
    gradient_accumulation_steps: PositiveInt = 1
    """Steps whose gradients are summed before each optimizer step."""
    scheduler: Scheduler = "linear"
    """Learning-rate schedule."""
    warmup_ratio: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    """Fraction of steps used for warmup; exclusive with warmupSteps."""
    warmup_steps: Annotated[int | None, Field(ge=0)] = None
    """Warmup steps; exclusive with warmupRatio."""
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.0
    """Weight decay."""
    optimizer: Optimizer = "adamw"
    """adamw, adafactor, adamw-8bit or paged-adamw-8bit (8-bit ones need a GPU)."""
    max_grad_norm: Annotated[float, Field(gt=0)] = 1.0
    """Gradient clipping norm."""
    precision: Precision = "auto"
    """auto (bf16 where the GPU supports it, else fp16 on GPU, fp32 on CPU), bf16, fp16 or fp32."""
    gradient_checkpointing: bool = False
    """Trade compute for memory by recomputing activations."""
    seed: NonNegativeInt = 42
    """Random seed."""
    eval_every: EvalEvery = "epoch"
    """Evaluate every epoch ("epoch") or every N steps."""
    metrics: Annotated[list[Metric], Field(max_length=8)] = Field(default_factory=list)
    """Evaluation metrics: accuracy, f1, precision, recall (classification); rouge, bleu, perplexity, exact-match (generation)."""
    early_stopping: EarlyStoppingSpec | None = None
    """Stop early when the watched metric stops improving (needs an evaluation set)."""
    extra_args: Annotated[
        dict[str, Any], Field(json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})
    ] = Field(default_factory=dict)
    """Passed to transformers TrainingArguments as is (escape hatch)."""
    stall_timeout_seconds: Annotated[int, Field(ge=10)] = 1800
    """When no training step finishes for this long (a hung rank or collective), the trainer ends the attempt
    with reason Stalled; the next attempt resumes from the latest checkpoint."""


class ResourcesSpec(KubeModel):
    """Where and on what the trainer pods run."""

    nodes: PositiveInt = 1
    """Number of nodes (one trainer pod each). Several CPU nodes (gpusPerNode 0) train with DDP over gloo,
    one process per pod."""
    gpus_per_node: NonNegativeInt = 1
    """GPUs per pod; 0 trains on CPU."""
    gpu_resource: Annotated[str, Field(min_length=1)] = "nvidia.com/gpu"
    """Extended resource name of the GPUs."""
    cpu: Quantity | None = None
    """CPU request and limit per pod, e.g. "8"."""
    memory: Quantity | None = None
    """Memory request and limit per pod, e.g. 64Gi."""
    shared_memory: Quantity = "8Gi"
    """Size of the memory-backed /dev/shm."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Node labels the pods must match."""
    tolerations: list[Toleration] = Field(default_factory=list)
    """Tolerations of the pods."""
    affinity: Annotated[
        dict[str, Any] | None, Field(json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})
    ] = None
    """Pod affinity rules (core/v1 Affinity)."""
    priority_class_name: str | None = None
    """PriorityClass of the pods."""
    scheduler_name: str | None = None
    """Scheduler of the pods."""
    skip_fit_check: bool = False
    """Start the run even when the fit check estimates it needs more GPU memory than the GPUs have (the
    estimate is still made and shown in status.estimate)."""


class DistributedSpec(KubeModel):
    """How several GPUs share the work."""

    strategy: Strategy = "auto"
    """auto (DDP on several GPUs), ddp, fsdp or deepspeed."""
    deepspeed_stage: Literal[1, 2, 3] = 2
    """ZeRO stage (deepspeed only)."""


class CheckpointsSpec(KubeModel):
    """How often progress is saved."""

    every_steps: PositiveInt = 500
    """Save a checkpoint every N optimizer steps (and on SIGTERM)."""
    keep_last: PositiveInt = 2
    """Number of checkpoints kept."""


class OutputSpec(KubeModel):
    """Where the result goes."""

    uri: OutputURI | None = None
    """pvc://CLAIM/PATH, s3://BUCKET/PREFIX or oci://REGISTRY/REPOSITORY:TAG (a CNCF ModelPack artifact pushed
    to that registry); required in a cluster."""
    merge_adapter: bool = False
    """Also write the adapter merged into the base model (lora, qlora, ia3)."""
    secret_ref: SecretKeyRef | None = None
    """Secret with S3 credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, optional AWS_ENDPOINT_URL); for
    oci:// a kubernetes.io/dockerconfigjson Secret with the registry's credentials (as image pull secrets are)."""
    checkpoint_uri: CheckpointURI | None = None
    """oci:// outputs: where checkpoints and a copy of the result go (pvc://CLAIM/PATH or s3://BUCKET/PREFIX);
    required with oci://, so a refused push loses nothing."""
    checkpoint_secret_ref: LocalObjectReference | None = None
    """Secret with S3 credentials for an s3:// checkpointUri (the keys of secretRef for s3://)."""
    overwrite_tag: bool = False
    """oci:// outputs: push even when the tag exists (it then points at the new result). Off: a run never moves
    a tag that another push made, and says so."""
    # "register" in YAML; another name in Python (pydantic's BaseModel has a register() of its own)
    registration: Annotated[RegisterSpec | None, Field(alias="register")] = None
    """Model registries that get a version for each promoted result (a result that failed its evaluation gate
    is not registered)."""


# CEL rules the API server checks; the same rules run in Python in FineTuneJobSpec.check_rules. Where they say
# self.model.task, the API server reads the task the objective implies when it is left out (below).
FINETUNEJOB_SPEC_CEL: list[JsonValue] = [
    {
        "rule": "!has(self.model.labels) || (has(self.model.numLabels) && size(self.model.labels) == self.model.numLabels)",
        "message": "model.labels must have exactly model.numLabels names",
        "fieldPath": ".model.labels",
    },
    {
        "rule": "self.method.type != 'qlora' || self.resources.gpusPerNode >= 1",
        "message": "method.type qlora needs a GPU: set resources.gpusPerNode >= 1",
        "fieldPath": ".resources.gpusPerNode",
    },
    {
        "rule": "!self.dataset.packing || self.model.task == 'causal-lm'",
        "message": "dataset.packing works only with model.task causal-lm",
        "fieldPath": ".dataset.packing",
    },
    {
        "rule": "!self.dataset.packing || !(self.method.type in ['prefix-tuning', 'prompt-tuning'])",
        "message": "dataset.packing does not work with prefix-tuning or prompt-tuning",
        "fieldPath": ".dataset.packing",
    },
    {
        "rule": "!self.output.mergeAdapter || self.method.type in ['lora', 'qlora', 'ia3']",
        "message": "output.mergeAdapter works only with method.type lora, qlora or ia3",
        "fieldPath": ".output.mergeAdapter",
    },
    {
        "rule": "!has(self.dataset.evalSplit) || self.dataset.evalFraction == 0.0",
        "message": "dataset.evalSplit and dataset.evalFraction are exclusive: set one of them",
        "fieldPath": ".dataset.evalFraction",
    },
    {
        "rule": "self.resources.nodes == 1 || self.resources.gpusPerNode >= 1"
        " || !has(self.distributed) || !has(self.distributed.strategy)"
        " || self.distributed.strategy in ['auto', 'ddp']",
        "message": "resources.nodes > 1 on CPU (gpusPerNode 0) trains with DDP over gloo:"
        " set distributed.strategy auto or ddp, or gpusPerNode >= 1",
        "fieldPath": ".resources.nodes",
    },
    {
        "rule": "has(self.output.uri) && !self.output.uri.startsWith('file://')",
        "message": "output.uri is required in a cluster and must be pvc://CLAIM/PATH, s3://BUCKET/PREFIX or "
        "oci://REGISTRY/REPOSITORY:TAG",
        "fieldPath": ".output.uri",
    },
    {
        "rule": "(!has(self.model.uri) || !self.model.uri.startsWith('file://')) && !self.dataset.uri.startsWith('file://')",
        "message": "file:// URIs work only with `kubetune train --local`; in a cluster use hf://, pvc:// or s3://",
        "fieldPath": ".model.uri",
    },
    {
        "rule": "self.dataset.format != 'classification' || self.model.task == 'sequence-classification'",
        "message": "dataset.format classification needs model.task sequence-classification",
        "fieldPath": ".dataset.format",
    },
    {
        "rule": "self.dataset.format != 'token-tags' || self.model.task == 'token-classification'",
        "message": "dataset.format token-tags needs model.task token-classification",
        "fieldPath": ".dataset.format",
    },
    {
        "rule": "!has(self.training.earlyStopping) || has(self.dataset.evalSplit) || self.dataset.evalFraction > 0.0",
        "message": "training.earlyStopping needs an evaluation set: set dataset.evalSplit or dataset.evalFraction",
        "fieldPath": ".dataset.evalSplit",
    },
    {
        "rule": "has(self.dataset.evalSplit) || self.dataset.evalFraction > 0.0 || self.training.metrics.all(m, m == 'perplexity')",
        "message": "training.metrics other than perplexity need held-out data: set dataset.evalSplit or dataset.evalFraction, or remove them (perplexity alone is then the training perplexity)",
        "fieldPath": ".training.metrics",
    },
    {
        "rule": "!(self.model.task in ['sequence-classification', 'token-classification']) || self.training.metrics.all(m, m in ['accuracy', 'f1', 'precision', 'recall'])",
        "message": "classification tasks support the metrics accuracy, f1, precision and recall",
        "fieldPath": ".training.metrics",
    },
    {
        "rule": "!(self.model.task in ['causal-lm', 'seq2seq']) || self.training.metrics.all(m, m in ['rouge', 'bleu', 'perplexity', 'exact-match'])",
        "message": "causal-lm and seq2seq support the metrics rouge, bleu, perplexity and exact-match",
        "fieldPath": ".training.metrics",
    },
    {
        "rule": "self.model.task != 'masked-lm' || self.training.metrics.all(m, m == 'perplexity')",
        "message": "masked-lm supports the metric perplexity",
        "fieldPath": ".training.metrics",
    },
    {
        "rule": "self.model.task != 'question-answering' || self.training.metrics.all(m, m in ['exact-match', 'f1'])",
        "message": "question-answering supports the metrics exact-match and f1",
        "fieldPath": ".training.metrics",
    },
    {
        "rule": "self.model.task != 'masked-lm' || self.dataset.format in ['auto', 'text']",
        "message": "model.task masked-lm needs dataset.format text (or auto)",
        "fieldPath": ".dataset.format",
    },
    {
        "rule": "self.model.task != 'question-answering' || self.dataset.format in ['auto', 'question-answering']",
        "message": "model.task question-answering needs dataset.format question-answering (or auto)",
        "fieldPath": ".dataset.format",
    },
    {
        "rule": "self.dataset.format != 'question-answering' || self.model.task == 'question-answering'",
        "message": "dataset.format question-answering needs model.task question-answering",
        "fieldPath": ".dataset.format",
    },
    {
        "rule": "self.model.task != 'question-answering' || self.dataset.docStride < self.dataset.maxLength",
        "message": "dataset.docStride must be smaller than dataset.maxLength (windows overlap by docStride tokens)",
        "fieldPath": ".dataset.docStride",
    },
    {
        "rule": "!(self.model.task in ['masked-lm', 'question-answering']) || !(self.method.type in ['prefix-tuning', 'prompt-tuning'])",
        "message": "prefix-tuning and prompt-tuning do not apply to masked-lm or question-answering; use lora, full or head-only",
        "fieldPath": ".method.type",
    },
    {
        "rule": "!has(self.training.warmupSteps) || self.training.warmupRatio == 0.0",
        "message": "training.warmupRatio and training.warmupSteps are exclusive: set one of them",
        "fieldPath": ".training.warmupSteps",
    },
    {
        "rule": "!has(self.model.revision) || self.model.revision == 'main' || (has(self.model.uri) && self.model.uri.startsWith('hf://'))",
        "message": "model.revision applies only to hf:// models; remove it",
        "fieldPath": ".model.revision",
    },
    *OBJECTIVE_SPEC_CEL,
]


FINETUNEJOB_SPEC_CEL += TRACKING_CEL
FINETUNEJOB_SPEC_CEL += PUBLISHING_CEL
FINETUNEJOB_SPEC_CEL += EVALUATION_CEL
FINETUNEJOB_SPEC_CEL[:] = implied_task_cel(
    FINETUNEJOB_SPEC_CEL
)  # last: every rule above reads the implied task


class FineTuneJobSpec(KubeModel):
    """What to fine-tune, on what data, how, and where the result goes."""

    model_config = ConfigDict(
        **KubeModel.model_config, json_schema_extra={"x-kubernetes-validations": FINETUNEJOB_SPEC_CEL}
    )

    model: ModelSpec
    """The base model."""
    dataset: DatasetSpec
    """The training data."""
    method: MethodSpec = Field(default_factory=MethodSpec)
    """How the model is adapted (full, head-only, lora, qlora, prefix-tuning, prompt-tuning, ia3)."""
    objective: ObjectiveSpec = Field(default_factory=ObjectiveSpec)
    """What is optimized: sft, dpo, kto, reward, grpo or rloo."""
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    """Hyperparameters."""
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    """Nodes, GPUs, CPU, memory and scheduling of the trainer pods."""
    distributed: DistributedSpec = Field(default_factory=DistributedSpec)
    """Multi-GPU strategy."""
    checkpoints: CheckpointsSpec = Field(default_factory=CheckpointsSpec)
    """Checkpointing."""
    output: OutputSpec = Field(default_factory=OutputSpec)
    """Where the result is stored."""
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    """Experiment trackers (TensorBoard, MLflow, Weights & Biases) the trainer reports to."""
    evaluation: EvaluationSpec | None = None
    """Evaluate the result after training (and the base model, compareWithBase) and promote it only when it
    passes its gates; none: every result is promoted."""
    image: Annotated[str | None, Field(min_length=1)] = None
    """Trainer image; defaults to the operator's setting."""
    image_pull_secrets: list[LocalObjectReference] = Field(default_factory=list)
    """Secrets for pulling the trainer image."""
    env: Annotated[
        list[EnvVar],
        Field(json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]}),
    ] = Field(default_factory=list)
    """Extra environment variables of the trainer container."""
    queue_name: Annotated[str | None, Field(min_length=1, max_length=63)] = None
    """Kueue LocalQueue; the Job is created suspended for Kueue to admit."""
    suspend: bool = False
    """Suspend the run (pods are deleted; resuming continues from the latest checkpoint)."""
    backoff_limit: NonNegativeInt = 3
    """Whole-run retries after a failed attempt; each resumes from the latest checkpoint."""
    active_deadline_seconds: Annotated[int | None, Field(ge=1)] = None
    """Fail the run when it has been running this long."""
    pending_deadline_seconds: Annotated[int | None, Field(ge=1)] = None
    """Fail when the trainer is not running this long after the run was created."""
    ttl_seconds_after_finished: Annotated[int | None, Field(ge=0)] = None
    """Delete the FineTuneJob this long after it succeeded or failed."""

    @field_validator("env")
    @classmethod
    def _env_names_unique(cls, env: list[EnvVar]) -> list[EnvVar]:
        names = [e.name for e in env]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"environment variable(s) {', '.join(duplicates)} set more than once")
        return env

    @model_validator(mode="after")
    def _imply_task(self) -> FineTuneJobSpec:
        """model.task left out: the task the objective trains (before the rules, which read it)."""
        if "task" not in self.model.model_fields_set:
            self.model = self.model.model_copy(update={"task": implied_task(self.objective.type)})
        return self

    @model_validator(mode="after")
    def _check_rules(self, info: ValidationInfo) -> FineTuneJobSpec:
        target = (info.context or {}).get("target", TARGET_CLUSTER)
        raise_problems(self.problems(target))
        return self

    def warnings(self) -> list[Problem]:
        """What is valid but may not be what the user expects (``kubetune validate`` prints them, exit 0)."""
        data = self.dataset
        has_eval = data.eval_split is not None or data.eval_fraction > 0
        out = []
        if "perplexity" in self.training.metrics and not has_eval:
            out.append(
                Problem(
                    "training.metrics",
                    "perplexity without an evaluation set is the training perplexity (exp of the training loss), "
                    "not a held-out score; set dataset.evalSplit or dataset.evalFraction for eval_perplexity",
                )
            )
        # fields_set: what the manifest says (the API server fills in defaults, so this is for `validate`)
        for field, alias, task in (("mlm_probability", "mlmProbability", "masked-lm"),
                                   ("doc_stride", "docStride", "question-answering")):  # fmt: skip
            if field in data.model_fields_set and self.model.task != task:
                out.append(
                    Problem(
                        f"dataset.{alias}", f"applies only to model.task {task}; {self.model.task} ignores it"
                    )
                )
        return out

    def problems(self, target: str = TARGET_CLUSTER) -> list[Problem]:
        """The cross-field rules of the FineTuneJob spec, each broken one as a Problem with its field path."""
        model, data, method, training, resources = (
            self.model,
            self.dataset,
            self.method,
            self.training,
            self.resources,
        )
        has_eval = data.eval_split is not None or data.eval_fraction > 0
        checks: list[tuple[bool, str, str]] = [
            (model.labels is not None and len(model.labels) != (model.num_labels or -1), "model.labels",
             f"has {len(model.labels or [])} names but model.numLabels is {model.num_labels or 'not set'}; give one name per label"),
            (model.revision not in (None, "main") and not (model.uri or "").startswith("hf://"), "model.revision",
             "applies only to hf:// models; remove it"),
            (method.type == "qlora" and resources.gpus_per_node < 1, "resources.gpusPerNode",
             "qlora needs a GPU (bitsandbytes 4/8-bit): set gpusPerNode >= 1 or use method lora"),
            (data.packing and model.task != "causal-lm", "dataset.packing",
             f"packing works only with model.task causal-lm, not {model.task}; set it to false"),
            (data.packing and method.type in ("prefix-tuning", "prompt-tuning"), "dataset.packing",
             f"packing does not work with {method.type} (virtual tokens break the packed position ids); set it to false"),
            (self.output.merge_adapter and method.type not in ADAPTER_METHODS, "output.mergeAdapter",
             f"method {method.type} has no adapter to merge (only lora, qlora and ia3 do); set it to false"),
            (data.eval_split is not None and data.eval_fraction > 0, "dataset.evalFraction",
             "evalSplit and evalFraction are exclusive: set one of them"),
            (resources.nodes > 1 and resources.gpus_per_node < 1 and self.distributed.strategy not in ("auto", "ddp"),
             "resources.nodes",
             f"several CPU nodes (gpusPerNode 0) train with DDP over gloo, not {self.distributed.strategy}: "
             "set distributed.strategy auto or ddp, or gpusPerNode >= 1"),
            (data.format == "classification" and model.task != "sequence-classification", "dataset.format",
             "classification data needs model.task sequence-classification"),
            (data.format == "token-tags" and model.task != "token-classification", "dataset.format",
             "token-tags data needs model.task token-classification"),
            (training.early_stopping is not None and not has_eval, "dataset.evalSplit",
             "training.earlyStopping needs an evaluation set: set dataset.evalSplit or dataset.evalFraction"),
            (model.task == "masked-lm" and data.format not in ("auto", "text"), "dataset.format",
             f"model.task masked-lm learns from plain text: use format text (or auto), not {data.format}"),
            (model.task == "question-answering" and data.format not in ("auto", "question-answering"), "dataset.format",
             f"model.task question-answering needs format question-answering (question, context, answers), not {data.format}"),
            (data.format == "question-answering" and model.task != "question-answering", "dataset.format",
             f"question-answering data needs model.task question-answering, not {model.task}"),
            (model.task == "question-answering" and data.doc_stride >= data.max_length, "dataset.docStride",
             f"must be smaller than dataset.maxLength ({data.max_length}): consecutive windows of a long context "
             "share docStride tokens"),
            (model.task in ENCODER_TASKS and method.type in ("prefix-tuning", "prompt-tuning"), "method.type",
             f"{method.type} does not apply to {model.task}; use lora, full or head-only"),
            (training.warmup_steps is not None and training.warmup_ratio > 0, "training.warmupSteps",
             "warmupRatio and warmupSteps are exclusive: set one of them"),
        ]  # fmt: skip
        checks += tracking_problems(self.tracking)
        checks += publishing_problems(self.output, self.tracking, target == TARGET_CLUSTER)
        if self.evaluation is not None:
            checks += evaluation_problems(
                self.evaluation,
                model.task,
                TASK_METRICS[model.task],
                has_eval,
                self.objective.type,
                tuple(get_args(DatasetFormat)),
                target == TARGET_CLUSTER,
                method.type,
            )
        problems = [Problem(path, message) for broken, path, message in checks if broken]
        problems += objective_problems(
            self.objective,
            task=model.task,
            data_format=data.format,
            num_labels=model.num_labels,
            method=method.type,
            cluster=target == TARGET_CLUSTER,
        )
        allowed = TASK_METRICS[model.task]
        wrong = [m for m in training.metrics if m not in allowed]
        if wrong:
            problems.append(
                Problem(
                    "training.metrics",
                    f"{', '.join(wrong)} do not apply to {model.task}; use {', '.join(allowed)}",
                )
            )
        held_out = [m for m in training.metrics if m in allowed and m not in TRAINING_SET_METRICS]
        if held_out and not has_eval and not wrong:
            problems.append(
                Problem(
                    "training.metrics",
                    f"{', '.join(held_out)} {'needs' if len(held_out) == 1 else 'need'} held-out data: set dataset.evalSplit or dataset.evalFraction, "
                    "or remove them (perplexity works without: it is then the training perplexity)",
                )
            )
        if target == TARGET_CLUSTER:
            if self.output.uri is None or self.output.uri.startswith("file://"):
                problems.append(
                    Problem(
                        "output.uri",
                        "required in a cluster: use pvc://CLAIM/PATH, s3://BUCKET/PREFIX or "
                        "oci://REGISTRY/REPOSITORY:TAG",
                    )
                )
            for path, uri in (("model.uri", model.uri or ""), ("dataset.uri", data.uri)):
                if uri.startswith("file://"):
                    problems.append(
                        Problem(
                            path,
                            "file:// works only with `kubetune train --local`; use hf://, pvc:// or s3://",
                        )
                    )
        return problems


class Progress(KubeModel):
    """Live training progress, written by the trainer."""

    step: int = 0
    """Optimizer steps done."""
    total_steps: int = 0
    """Optimizer steps planned."""
    epoch: float = 0.0
    """Epochs done (fractional)."""
    percent: float = 0.0
    """step / totalSteps in percent."""
    loss: float | None = None
    """Latest training loss."""
    eval_loss: float | None = None
    """Latest evaluation loss."""
    learning_rate: float | None = None
    """Current learning rate."""
    tokens_per_second: float | None = None
    """Training throughput over all GPUs."""
    eta_seconds: float | None = None
    """Estimated seconds until the run finishes."""
    reward: float | None = None
    """grpo/rloo: mean reward of the latest generations (weighted sum of the rewards)."""
    reward_std: float | None = None
    """grpo/rloo: standard deviation of that reward."""
    kl: float | None = None
    """grpo/rloo: KL divergence to the reference model (reported when objective.rl.beta > 0)."""
    updated_at: datetime | None = None
    """When this progress was reported."""
    reason: str | None = None
    """Why the trainer ended the attempt early (Stalled); cleared when training starts again."""
    message: str | None = None
    """What happened, in words (with reason)."""


class CheckpointStatus(KubeModel):
    """The latest complete checkpoint."""

    uri: str | None = None
    """Where it is."""
    step: int | None = None
    """Step it was taken at."""
    saved_at: datetime | None = None
    """When it was saved."""


class PreemptionStatus(KubeModel):
    """Trainer pods of the current run stopped by a disruption (an eviction, a preemption by the scheduler,
    a node drain or taint, a kubelet's node-pressure eviction: the pod condition ``DisruptionTarget``).
    The Job replaces such a pod without using an attempt; the run resumes from the latest checkpoint."""

    count: int = 0
    """Disrupted trainer pods in the current run (each reported once, with an Event ``Preempted``)."""
    last_pod: str | None = None
    """The pod disrupted last."""
    last_reason: str | None = None
    """Its DisruptionTarget reason (EvictionByEvictionAPI, PreemptionByScheduler, ...)."""
    last_time: datetime | None = None
    """When it was disrupted."""
    reported_pods: list[str] = Field(default_factory=list)
    """Disrupted pods already reported that still exist (each is reported once, also across restarts)."""


class ParentResult(KubeModel):
    """A FineTuneJob whose result this one started from (model.fineTuneJobRef) or used (a reward model)."""

    name: str
    """The FineTuneJob's name (same namespace)."""
    uri: str | None = None
    """The result it provided (the model, merged model or reward model)."""
    digest: str | None = None
    """Its configHash when it produced that result."""
    role: str | None = None
    """model (the base of this job) or reward-model."""


class ResultStatus(KubeModel):
    """The result of the latest successful run."""

    uri: str | None = None
    """Where the adapter or model is."""
    kind: ResultKind | None = None
    """adapter, full, prefix or prompt; masked-lm, question-answering or reward-model for a whole model of those."""
    merged_uri: str | None = None
    """Where the merged model is (mergeAdapter)."""
    metrics: dict[str, float] = Field(default_factory=dict)
    """Final training and evaluation metrics."""
    base_model_revision: str | None = None
    """The resolved commit of the base model."""
    dataset_digest: str | None = None
    """Digest of the training data."""
    config_hash: str | None = None
    """Hash of the spec that produced it."""
    image: str | None = None
    """Trainer image that produced it."""
    parents: list[ParentResult] = Field(default_factory=list)
    """The chain this result comes from: the FineTuneJobs whose results it started from or used."""
    digest: str | None = None
    """oci:// outputs: the pushed artifact's manifest digest (uri names it too: oci://...:TAG@sha256:...)."""
    storage_uri: str | None = None
    """oci:// outputs: where the result is also kept (under output.checkpointUri)."""
    publish_error: PublishError | None = None
    """Why the result did not reach output.uri (oci://) or its model registry; the result is then at
    storageUri."""
    registered_model: RegisteredModel | None = None
    """The model registry version the result became (output.register)."""
    promoted: bool | None = None
    """false: the result failed its evaluation gate (spec.evaluation); it is kept, and no ModelServe serves it.
    true (or unset, for results without an evaluation) it is served."""


Phase = Literal["Pending", "Running", "Succeeded", "Failed", "Suspended"]


class FineTuneJobStatus(KubeModel):
    """Observed state; conditions are the truth and phase summarizes them."""

    phase: Phase | None = None
    """Pending, Running, Succeeded, Failed or Suspended."""
    observed_generation: int | None = None
    """The metadata.generation the status reflects."""
    conditions: list[Condition] = Field(default_factory=list)
    """Validated (the spec, and the fit check: DoesNotFit), Running (the trainer pods, or why they do not
    run), Succeeded, Failed (with the reason: InvalidSpec, BackoffLimitExceeded, DeadlineExceeded,
    EvaluationGateFailed, a broken reference...), Suspended (spec.suspend, Kueue admission), WaitingForModel
    (a referenced FineTuneJob does not exist yet or has not succeeded), and Ready, Reconciling, Stalled as
    kstatus (Flux, Argo CD) reads them."""
    job_name: str | None = None
    """The trainer batch/v1 Job."""
    start_time: datetime | None = None
    """When the current run started."""
    completion_time: datetime | None = None
    """When the current run finished."""
    attempts: int = 0
    """Attempts of the current run so far."""
    preemptions: PreemptionStatus | None = None
    """Disruptions of the current run's trainer pods (none so far: absent)."""
    progress: Progress = Field(default_factory=Progress)
    """Live progress (written by the trainer)."""
    checkpoint: CheckpointStatus = Field(default_factory=CheckpointStatus)
    """Latest checkpoint (written by the trainer)."""
    result: ResultStatus = Field(default_factory=ResultStatus)
    """Result of the run (written by the trainer)."""
    estimate: EstimateStatus | None = None
    """The fit check: estimated peak GPU memory per GPU against the GPUs' memory (written by the operator)."""
    evaluation: EvaluationStatus | None = None
    """The evaluation of the result against spec.evaluation's gates (written by the trainer)."""


class FineTuneJob(KubeModel):
    """A fine-tuning run of a base model on a dataset."""

    api_version: Literal["kubetune.io/v1alpha1"] = "kubetune.io/v1alpha1"
    """kubetune.io/v1alpha1"""
    kind: Literal["FineTuneJob"] = "FineTuneJob"
    """FineTuneJob"""
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    """Standard object metadata."""
    spec: FineTuneJobSpec
    """Desired state."""
    status: FineTuneJobStatus | None = None
    """Observed state."""
