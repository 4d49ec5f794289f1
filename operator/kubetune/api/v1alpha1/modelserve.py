"""ModelServe: serve a base model or a FineTuneJob's result (plus LoRA adapters) with TGI or vLLM (API.md)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import AfterValidator, ConfigDict, Field, JsonValue, ValidationInfo, model_validator

from .common import (
    DNS_LABEL,
    TARGET_CLUSTER,
    Condition,
    IntOrPercent,
    KubeModel,
    LocalObjectReference,
    ObjectMeta,
    Problem,
    Quantity,
    SecretKeyRef,
    Toleration,
    raise_problems,
)
from .finetunejob import _uri_type

SERVE_SCHEMES = ("hf", "pvc", "s3", "oci")
if TYPE_CHECKING:  # to a type checker it is a string; pydantic gets the checks
    ServeURI = str
else:
    ServeURI = _uri_type(SERVE_SCHEMES)


def _check_regex(value: str | None) -> str | None:
    if value is not None:
        try:
            re.compile(value)
        except re.error as error:
            raise ValueError(f"not a valid regular expression: {error}") from None
    return value


MODEL_SOURCE_CEL: list[JsonValue] = [
    {
        "rule": "has(self.fineTuneJobRef) != has(self.uri)",
        "message": "set exactly one of fineTuneJobRef and uri",
    },
    {
        "rule": "!has(self.secretRef) || has(self.uri)",
        "message": "secretRef goes with uri; a fineTuneJobRef uses the job's own secrets",
        "fieldPath": ".secretRef",
    },
]


class ModelSource(KubeModel):
    """Exactly one of fineTuneJobRef or uri."""

    model_config = ConfigDict(
        **KubeModel.model_config, json_schema_extra={"x-kubernetes-validations": MODEL_SOURCE_CEL}
    )

    fine_tune_job_ref: LocalObjectReference | None = None
    """Serve this FineTuneJob's result (its full or merged model); follows each new result."""
    uri: ServeURI | None = None
    """Serve this model: hf://ORG/NAME, pvc://CLAIM/PATH, s3://BUCKET/PREFIX or an OCI model artifact
    oci://REGISTRY/REPOSITORY:TAG (or @sha256:DIGEST; pulled by an init container)."""
    secret_ref: SecretKeyRef | None = None
    """With uri: a Secret with a Hub token for a private hf:// model (key defaults to HF_TOKEN), with S3
    credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, optional AWS_ENDPOINT_URL) for s3://, or a
    kubernetes.io/dockerconfigjson Secret for oci://."""

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelSource:
        problems = []
        if (self.fine_tune_job_ref is None) == (self.uri is None):
            problems.append(Problem("", "set exactly one of fineTuneJobRef and uri"))
        if self.secret_ref is not None and self.uri is None:
            problems.append(
                Problem("secretRef", "goes with uri; a fineTuneJobRef uses the job's own secrets")
            )
        raise_problems(problems)
        return self


COMMA_MESSAGE = (
    "an adapter's uri cannot contain ',': both engines read their adapter lists comma separated (TGI's "
    "LORA_ADAPTERS, vLLM's --lora-modules); rename the folder"
)


class AdapterSource(ModelSource):
    """A LoRA adapter served on top of the model."""

    model_config = ConfigDict(
        **KubeModel.model_config,
        json_schema_extra={
            "x-kubernetes-validations": [
                *MODEL_SOURCE_CEL,
                {
                    "rule": "!has(self.uri) || !self.uri.contains(',')",
                    "message": COMMA_MESSAGE,
                    "fieldPath": ".uri",
                },
            ]
        },
    )

    name: Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL)]
    """Adapter name clients pass as the model/adapter id."""

    @model_validator(mode="after")
    def _no_comma(self) -> AdapterSource:
        if self.uri is not None and "," in self.uri:
            raise_problems([Problem("uri", COMMA_MESSAGE)])
        return self


class ServeResources(KubeModel):
    """Resources and placement of the TGI pods."""

    gpus: Annotated[int, Field(ge=0)] = 1
    """GPUs per replica."""
    gpu_resource: Annotated[str, Field(min_length=1)] = "nvidia.com/gpu"
    """Extended resource name of the GPUs."""
    cpu: Quantity | None = None
    """CPU request and limit per replica."""
    memory: Quantity | None = None
    """Memory request and limit per replica."""
    shared_memory: Quantity = "1Gi"
    """Size of the memory-backed /dev/shm (NCCL needs it for sharded models)."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Node labels the pods must match."""
    tolerations: list[Toleration] = Field(default_factory=list)
    """Tolerations of the pods."""


TGIQuantize = Literal[
    "awq",
    "compressed-tensors",
    "eetq",
    "exl2",
    "gptq",
    "marlin",
    "bitsandbytes",
    "bitsandbytes-nf4",
    "bitsandbytes-fp4",
    "fp8",
]


# Flags the operator sets itself on each engine's command line (engines/tgi.py, engines/vllm.py; TGI's
# through the environment too: clap reads MODEL_ID etc. for --model-id etc.). Repeated in extraArgs they
# would fail the start (TGI's launcher refuses a repeated argument) or quietly override the operator's
# (vLLM takes the last: an extra --port moves the server while its probes stay on 8000).
TGI_RESERVED_FLAGS = (
    "--model-id", "--port", "--hostname", "--lora-adapters", "--huggingface-hub-cache", "--json-output",
    "--quantize", "--num-shard", "--dtype", "--max-input-tokens", "--max-total-tokens",
    "--max-batch-prefill-tokens", "--max-concurrent-requests",
)  # fmt: skip
VLLM_RESERVED_FLAGS = (
    "--model", "--host", "--port", "--served-model-name", "--tensor-parallel-size", "--dtype", "--max-model-len",
    "--gpu-memory-utilization", "--quantization", "--enforce-eager", "--enable-lora", "--max-lora-rank",
    "--max-loras", "--max-cpu-loras", "--lora-modules",
)  # fmt: skip


def _reserved_rule(field: str, flags: tuple[str, ...], engine: str, spec: str) -> JsonValue:
    alternatives = "|".join(f.removeprefix("--") for f in flags)
    return {
        "rule": f"!has(self.{field}) || self.{field}.extraArgs.all(a, !a.matches('^--({alternatives})(=.*)?$'))",
        "message": f"{field}.extraArgs repeats a flag the operator sets from spec.{field} or itself; set it "
        f"through {spec} instead ({', '.join(flags)})",
        "fieldPath": f".{field}.extraArgs",
    }


# Bounded, so the API server's CEL cost estimate for the reserved-flag rules stays within its budget.
ExtraArgs = Annotated[list[Annotated[str, Field(max_length=512)]], Field(max_length=64)]


def reserved_in(extra_args: list[str], flags: tuple[str, ...]) -> list[str]:
    """The arguments of EXTRA_ARGS that name one of FLAGS (``--flag`` or ``--flag=value``)."""
    return [a for a in extra_args if a.split("=", 1)[0] in flags]


class TGISpec(KubeModel):
    """Text Generation Inference launcher settings."""

    quantize: TGIQuantize | None = None
    """--quantize: awq, gptq, bitsandbytes-nf4, fp8, ..."""
    num_shard: Annotated[int | None, Field(ge=1)] = None
    """--num-shard: GPUs the model is sharded over (at most resources.gpus)."""
    dtype: Literal["float16", "bfloat16"] | None = None
    """--dtype."""
    max_input_tokens: Annotated[int | None, Field(ge=1)] = None
    """--max-input-tokens."""
    max_total_tokens: Annotated[int | None, Field(ge=1)] = None
    """--max-total-tokens."""
    max_batch_prefill_tokens: Annotated[int | None, Field(ge=1)] = None
    """--max-batch-prefill-tokens."""
    max_concurrent_requests: Annotated[int | None, Field(ge=1)] = None
    """--max-concurrent-requests."""
    extra_args: ExtraArgs = Field(default_factory=list)
    """More text-generation-launcher arguments, as is."""


# --quantization values vLLM's argument parser accepts (vllm/model_executor/layers/quantization
# QuantizationMethods, 0.32 and 0.33; tests/serve/test_vllm_definitions.py reads them from the real vLLM);
# bitsandbytes, gguf and marlin are not among them ("Unknown quantization method").
VLLMQuantization = Literal["awq", "gptq", "fp8", "compressed-tensors"]


class VLLMSpec(KubeModel):
    """vLLM server settings (engine: vllm); each maps to a `vllm serve` flag."""

    dtype: Literal["auto", "float16", "bfloat16", "float32"] | None = None
    """--dtype."""
    max_model_len: Annotated[int | None, Field(ge=1)] = None
    """--max-model-len: context length (prompt + output)."""
    gpu_memory_utilization: Annotated[float | None, Field(gt=0, le=1)] = None
    """--gpu-memory-utilization: fraction of each GPU's memory vLLM may use."""
    tensor_parallel_size: Annotated[int | None, Field(ge=1)] = None
    """--tensor-parallel-size: GPUs the model is split over; defaults to resources.gpus."""
    quantization: VLLMQuantization | None = None
    """--quantization."""
    enforce_eager: bool = False
    """--enforce-eager: no CUDA graphs (less memory, slower decoding)."""
    max_loras: Annotated[int | None, Field(ge=1)] = None
    """--max-loras: adapters in one batch; defaults to the number of adapters the pods start with (at least 1)."""
    max_lora_rank: Literal[1, 8, 16, 32, 64, 128, 256, 320, 512] | None = None
    """--max-lora-rank; defaults to the smallest vLLM accepts that fits the adapters' LoRA rank (their
    FineTuneJobs' method.lora.r; 64 for adapters given by uri)."""
    max_cpu_loras: Annotated[int | None, Field(ge=1)] = None
    """--max-cpu-loras: adapters kept in CPU memory; defaults to three times maxLoras (each adapter is loaded under
    its served name and its version name NAME@DIGEST, and a new version's name beside them while it is switched
    in)."""
    extra_args: ExtraArgs = Field(default_factory=list)
    """More `vllm serve` arguments, as is."""


class SmokeTestSpec(KubeModel):
    """The generate call that must succeed before a rollout is Ready."""

    enabled: bool = True
    """Run the smoke test after each rollout."""
    prompt: Annotated[str, Field(min_length=1)] = "Hello"
    """Prompt sent to the model and to each adapter."""
    max_new_tokens: Annotated[int, Field(ge=1, le=4096)] = 8
    """Tokens to generate."""
    expect: Annotated[str | None, AfterValidator(_check_regex)] = None
    """A regular expression the generated text must match."""


class RolloutSpec(KubeModel):
    """How new revisions roll out."""

    max_surge: IntOrPercent = 1
    """Extra pods during a rollout (number or percent)."""
    max_unavailable: IntOrPercent = 0
    """Pods that may be unavailable during a rollout (number or percent)."""
    progress_deadline_seconds: Annotated[int, Field(ge=60)] = 1200
    """Fail the rollout when it has not progressed this long (large models load slowly)."""
    smoke_test: SmokeTestSpec = Field(default_factory=SmokeTestSpec)
    """The generate call that proves a rollout answers."""
    auto_rollback: bool = True
    """Return to the previous revision when a rollout fails."""


class ServiceSpec(KubeModel):
    """The Service in front of the TGI pods."""

    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    """Service type."""
    port: Annotated[int, Field(ge=1, le=65535)] = 80
    """Service port."""


TGI_DTYPE_WITH_QUANTIZE = (None, "bitsandbytes", "bitsandbytes-nf4", "bitsandbytes-fp4")
TGI_DTYPE_QUANTIZE_MESSAGE = (
    "tgi.dtype goes with tgi.quantize only when that is bitsandbytes, bitsandbytes-nf4 or bitsandbytes-fp4 "
    "(TGI's shards refuse both: they decide the weights' type each); unset one of them"
)


class ModelServeSpec(KubeModel):
    """What to serve and how."""

    model_config = ConfigDict(
        **KubeModel.model_config,
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.vllm) || !has(self.vllm.tensorParallelSize) || self.resources.gpus == 0"
                    " || self.vllm.tensorParallelSize <= self.resources.gpus",
                    "message": "vllm.tensorParallelSize cannot exceed resources.gpus",
                    "fieldPath": ".vllm.tensorParallelSize",
                },
                {
                    "rule": "!has(self.tgi.numShard) || self.resources.gpus == 0 || self.tgi.numShard <= self.resources.gpus",
                    "message": "tgi.numShard cannot exceed resources.gpus",
                    "fieldPath": ".tgi.numShard",
                },
                {
                    "rule": "self.adapters.all(a, self.adapters.exists_one(b, b.name == a.name))",
                    "message": "adapter names must be unique",
                    "fieldPath": ".adapters",
                },
                {
                    "rule": "!has(self.tgi) || !has(self.tgi.dtype) || !has(self.tgi.quantize) || self.tgi.quantize"
                    " in ['bitsandbytes', 'bitsandbytes-nf4', 'bitsandbytes-fp4']",
                    "message": TGI_DTYPE_QUANTIZE_MESSAGE,
                    "fieldPath": ".tgi.dtype",
                },
                {
                    "rule": "!has(self.tgi) || !has(self.tgi.quantize) || self.tgi.quantize != 'exl2'"
                    " || !has(self.tgi.numShard) || self.tgi.numShard <= 1",
                    "message": "tgi.quantize exl2 cannot be sharded (TGI's launcher refuses exl2 with numShard > 1)",
                    "fieldPath": ".tgi.numShard",
                },
                {
                    "rule": "!has(self.tgi) || !has(self.tgi.maxInputTokens) || !has(self.tgi.maxTotalTokens)"
                    " || self.tgi.maxInputTokens < self.tgi.maxTotalTokens",
                    "message": "tgi.maxInputTokens must be below tgi.maxTotalTokens (TGI's launcher refuses "
                    "max_input_tokens >= max_total_tokens)",
                    "fieldPath": ".tgi.maxInputTokens",
                },
                {
                    "rule": "!has(self.vllm) || !has(self.vllm.maxCpuLoras) || self.vllm.maxCpuLoras >= "
                    "(has(self.vllm.maxLoras) ? self.vllm.maxLoras : (size(self.adapters) > 0 ? size(self.adapters) : 1))",
                    "message": "vllm.maxCpuLoras must be at least vllm.maxLoras (which defaults to the number of "
                    "adapters): vLLM refuses to start otherwise",
                    "fieldPath": ".vllm.maxCpuLoras",
                },
                _reserved_rule("tgi", TGI_RESERVED_FLAGS, "TGI", "spec.tgi"),
                _reserved_rule("vllm", VLLM_RESERVED_FLAGS, "vLLM", "spec.vllm"),
            ]
        },
    )

    engine: Literal["tgi", "vllm"] = "tgi"
    """Serving engine: tgi (Text Generation Inference; adapters load at pod start) or vllm (adapters load
    and unload on running pods)."""
    model: ModelSource
    """The model to serve: a FineTuneJob's result or a URI."""
    adapters: Annotated[list[AdapterSource], Field(max_length=64)] = Field(default_factory=list)
    """LoRA adapters served on top of the model (TGI: LORA_ADAPTERS; vLLM: loaded at run time)."""
    replicas: Annotated[int, Field(ge=0)] = 1
    """Number of TGI pods."""
    image: Annotated[str | None, Field(min_length=1)] = None
    """TGI image; defaults to the operator's setting."""
    resources: ServeResources = Field(default_factory=ServeResources)
    """GPUs, CPU, memory and placement."""
    tgi: TGISpec = Field(default_factory=TGISpec)
    """TGI launcher settings (engine: tgi)."""
    vllm: VLLMSpec = Field(default_factory=VLLMSpec)
    """vLLM server settings (engine: vllm)."""
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    """Rollout strategy, smoke test and rollback."""
    service: ServiceSpec = Field(default_factory=ServiceSpec)
    """The Service in front of the pods."""

    @model_validator(mode="after")
    def _check_rules(self, info: ValidationInfo) -> ModelServeSpec:
        raise_problems(self.problems((info.context or {}).get("target", TARGET_CLUSTER)))
        return self

    def problems(self, target: str = TARGET_CLUSTER) -> list[Problem]:
        """Cross-field rules, each broken one as a Problem with its field path."""
        problems = []
        tp = self.vllm.tensor_parallel_size
        if tp is not None and self.resources.gpus and tp > self.resources.gpus:
            problems.append(
                Problem(
                    "vllm.tensorParallelSize",
                    f"{tp} tensor-parallel ranks need {tp} GPUs but resources.gpus is {self.resources.gpus}",
                )
            )
        shard = self.tgi.num_shard
        if shard is not None and self.resources.gpus and shard > self.resources.gpus:
            problems.append(
                Problem(
                    "tgi.numShard",
                    f"{shard} shards need {shard} GPUs but resources.gpus is {self.resources.gpus}",
                )
            )
        if self.tgi.dtype is not None and self.tgi.quantize not in TGI_DTYPE_WITH_QUANTIZE:
            problems.append(Problem("tgi.dtype", TGI_DTYPE_QUANTIZE_MESSAGE))
        if self.tgi.quantize == "exl2" and (self.tgi.num_shard or 1) > 1:
            problems.append(
                Problem(
                    "tgi.numShard", "exl2 cannot be sharded: TGI's launcher refuses exl2 with numShard > 1"
                )
            )
        tin, ttotal = self.tgi.max_input_tokens, self.tgi.max_total_tokens
        if tin is not None and ttotal is not None and tin >= ttotal:
            problems.append(
                Problem(
                    "tgi.maxInputTokens",
                    f"{tin} must be below tgi.maxTotalTokens {ttotal} (TGI's launcher refuses "
                    "max_input_tokens >= max_total_tokens)",
                )
            )
        max_loras = self.vllm.max_loras or max(1, len(self.adapters))
        if self.vllm.max_cpu_loras is not None and self.vllm.max_cpu_loras < max_loras:
            problems.append(
                Problem(
                    "vllm.maxCpuLoras",
                    f"{self.vllm.max_cpu_loras} is below vllm.maxLoras {max_loras} (which defaults to the number "
                    "of adapters): vLLM refuses to start; raise it or leave it unset",
                )
            )
        for field, flags, spec in (
            ("tgi", TGI_RESERVED_FLAGS, self.tgi),
            ("vllm", VLLM_RESERVED_FLAGS, self.vllm),
        ):
            if repeated := reserved_in(spec.extra_args, flags):
                problems.append(
                    Problem(
                        f"{field}.extraArgs",
                        f"{', '.join(repeated)} repeats a flag the operator sets from spec.{field} or itself; "
                        f"set it through spec.{field} instead",
                    )
                )
        given = [a.split("=", 1)[0] for a in self.tgi.extra_args if a.startswith("-")]
        if twice := sorted({f for f in given if given.count(f) > 1}):
            problems.append(
                Problem(
                    "tgi.extraArgs",
                    f"{', '.join(twice)} given twice: TGI's launcher refuses a repeated argument",
                )
            )
        names = [a.name for a in self.adapters]
        for name in sorted({n for n in names if names.count(n) > 1}):
            problems.append(
                Problem("adapters", f"adapter name {name!r} is used more than once; names must be unique")
            )
        return problems


class Revision(KubeModel):
    """What a rollout serves."""

    hash: str | None = None
    """Hash of the model, adapters and serving settings."""
    model: str | None = None
    """The resolved model location."""
    adapters: list[str] = Field(default_factory=list)
    """name=location of each adapter."""
    sources: list[str] = Field(default_factory=list)
    """FineTuneJobs (and their result config hashes) the revision came from."""


class LastRollout(KubeModel):
    """The most recent rollout."""

    started_at: datetime | None = None
    """When it started."""
    finished_at: datetime | None = None
    """When it finished."""
    result: Literal["succeeded", "rolled-back", "failed"] | None = None
    """succeeded, rolled-back or failed."""
    message: str | None = None
    """What happened, including the smoke test's error or output."""


class ServedAdapter(KubeModel):
    """An adapter as the vLLM pods serve it now (engine: vllm)."""

    name: str
    """The served name (what clients pass as model)."""
    uri: str | None = None
    """The version served: its location (a FineTuneJob's result URI, or spec.adapters[].uri)."""
    digest: str | None = None
    """A short hash of that version (its source and location); changes with every new result."""
    loaded_on_pods: int = 0
    """Ready pods of the current revision that serve this version under the name."""
    desired_pods: int = 0
    """Ready pods of the current revision (where it should be loaded)."""
    failed_digest: str | None = None
    """A version that failed to load or to answer (not tried again until a new result arrives)."""
    message: str | None = None
    """Why that version failed."""


class ModelServeStatus(KubeModel):
    """Observed state of a ModelServe."""

    phase: Literal["Pending", "Progressing", "Ready", "Degraded", "Failed"] | None = None
    """Pending, Progressing, Ready, Degraded or Failed."""
    observed_generation: int | None = None
    """The metadata.generation the status reflects."""
    conditions: list[Condition] = Field(default_factory=list)
    """Ready, Progressing, Degraded, and Reconciling / Stalled as kstatus (Flux, Argo CD) reads them."""
    endpoint: str | None = None
    """In-cluster URL of the Service."""
    revision: Revision = Field(default_factory=Revision)
    """What is being served now."""
    previous_revision: Revision | None = None
    """What was served before the latest rollout."""
    replicas: int = 0
    """Pods of the Deployment."""
    ready_replicas: int = 0
    """Ready pods."""
    last_rollout: LastRollout = Field(default_factory=LastRollout)
    """The most recent rollout."""
    served_adapters: list[ServedAdapter] = Field(default_factory=list)
    """engine vllm: each adapter's served version and on how many ready pods it is loaded."""


ADAPTER_NAMED_LIKE_MODEL = (  # engine vllm
    "is the ModelServe's own name, under which the model itself is served; vLLM refuses an adapter of that "
    "name (it conflicts with the served base model): rename the adapter"
)


class ModelServe(KubeModel):
    """A model (and LoRA adapters) served by TGI or vLLM with smoke-tested rollouts."""

    model_config = ConfigDict(
        **KubeModel.model_config,
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.spec.engine) || self.spec.engine != 'vllm' || !has(self.spec.adapters)"
                    " || self.spec.adapters.all(a, a.name != self.metadata.name)",
                    "message": f"an adapter's name {ADAPTER_NAMED_LIKE_MODEL}",
                    "fieldPath": ".spec.adapters",
                },
            ]
        },
    )

    api_version: Literal["kubetune.io/v1alpha1"] = "kubetune.io/v1alpha1"
    """kubetune.io/v1alpha1"""
    kind: Literal["ModelServe"] = "ModelServe"
    """ModelServe"""
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    """Standard object metadata."""
    spec: ModelServeSpec
    """Desired state."""
    status: ModelServeStatus | None = None
    """Observed state."""

    @model_validator(mode="after")
    def _adapter_names(self) -> ModelServe:
        name = self.metadata.name
        raise_problems([
            Problem(f"spec.adapters[{i}].name", f"{a.name!r} {ADAPTER_NAMED_LIKE_MODEL}")
            for i, a in enumerate(self.spec.adapters) if self.spec.engine == "vllm" and name and a.name == name
        ])  # fmt: skip
        return self
