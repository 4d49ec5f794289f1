"""Will a FineTuneJob fit on its GPUs? Peak GPU memory per GPU from the model's config.json and the spec.

Pure (no torch, no I/O): ``estimate(spec, config)`` gives the per-GPU bytes of the weights, the trainable
parameters' gradients, the optimizer state, the activations and a fixed overhead, each in the dtype the trainer
really uses (kubetune_trainer.train: full and head-only keep fp32 master weights under bf16/fp16 autocast;
adapter methods load the base in the compute dtype and PEFT keeps adapters in fp32; QLoRA stores the block
linears in 4 or 8 bits and prepare_model_for_kbit_training turns every other parameter to fp32).
``verdict`` compares it with the GPU memory of the node type and, when it does not fit, says what would.

The parameter, gradient and optimizer figures are counted tensor by tensor and match the trainer's measured
tensors (tests/trainer/test_fit_accuracy.py, docs/benchmarks.md); activations are a model of what autograd
saves per token and layer (docs/fit-and-evaluation.md says how close it is and on what evidence).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .modelshape import ModelShape, shape
from .v1alpha1.finetunejob import FineTuneJobSpec

GIB = 2**30
MIB = 2**20
# CUDA context, cuBLAS/cuDNN workspaces and the caching allocator's slack: memory a process holds besides its
# tensors (torch.cuda.max_memory_allocated does not see it; nvidia-smi does).
OVERHEAD_BYTES = int(1.5 * GIB)
# Node labels of NVIDIA's GPU feature discovery: memory in MiB, the product name.
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
# Usable memory (MiB, as GPU feature discovery reports it) of products whose name does not say it.
KNOWN_GPUS = {
    "T4": 15360, "L4": 23034, "A10": 23028, "A10G": 23028, "L40": 46068, "L40S": 46068, "A30": 24576,
    "A40": 46068, "V100": 16384, "H200": 143771, "GH200": 97871, "B200": 183359, "RTX-4090": 24564,
}  # fmt: skip
ADAPTER_METHODS = ("lora", "qlora", "ia3", "prefix-tuning", "prompt-tuning")
# PEFT's IA3 default targets (the keys and values of attention, the MLP's down projection), by family
IA3_TARGETS = {
    "gpt2": ("c_attn", "c_proj"), "bert": ("key", "value", "dense"), "roberta": ("key", "value", "dense"),
    "distilbert": ("k_lin", "v_lin", "lin2"), "t5": ("k", "v", "wo"), "mt5": ("k", "v", "wi_1"),
    "bart": ("k_proj", "v_proj", "fc2"),
}  # fmt: skip
IA3_DEFAULT = ("k_proj", "v_proj", "down_proj")
BNB_MIN_8BIT_SIZE = 4096  # bitsandbytes keeps 32-bit optimizer state for smaller tensors


@dataclass(frozen=True)
class Settings:
    """What of the spec changes memory, resolved for one GPU process (replace() makes the alternatives)."""

    task: str = "causal-lm"
    num_labels: int | None = None
    method: str = "lora"
    lora_r: int = 16
    lora_dropout: float = 0.05
    target_modules: str | tuple[str, ...] = "all-linear"
    quant_bits: int = 4
    double_quant: bool = True
    virtual_tokens: int = 20
    head_only_layers: int = 0
    precision: str = "bf16"
    """Resolved: bf16, fp16 or fp32."""
    optimizer: str = "adamw"
    batch_size: int = 8
    seq_len: int = 512
    target_len: int = 128
    gradient_checkpointing: bool = False
    gpus_per_node: int = 1
    nodes: int = 1
    strategy: str = "auto"
    deepspeed_stage: int = 2
    objective: str = "sft"
    completion_len: int = 0
    """grpo/rloo: generated tokens after each prompt."""

    @property
    def world(self) -> int:
        return max(1, self.gpus_per_node) * self.nodes

    @property
    def compute_bytes(self) -> int:
        return 4 if self.precision == "fp32" else 2


def settings_for(spec: FineTuneJobSpec) -> Settings:
    """The Settings of SPEC on its GPUs (precision auto is bf16 on a GPU; fp32 on CPU, gpusPerNode 0)."""
    m, t, r = spec.method, spec.training, spec.resources
    precision = t.precision if t.precision != "auto" else ("bf16" if r.gpus_per_node > 0 else "fp32")
    targets = m.lora.target_modules
    return Settings(
        task=spec.model.task,
        num_labels=spec.model.num_labels,
        method=m.type,
        lora_r=m.lora.r,
        lora_dropout=m.lora.dropout,
        target_modules=targets if isinstance(targets, str) else tuple(targets),
        quant_bits=m.quantization.bits,
        double_quant=m.quantization.double_quant,
        virtual_tokens=(
            m.prefix_tuning.num_virtual_tokens
            if m.type == "prefix-tuning"
            else m.prompt_tuning.num_virtual_tokens
        ),
        head_only_layers=m.head_only.unfreeze_last_layers,
        precision=precision,
        optimizer=t.optimizer,
        batch_size=t.batch_size,
        seq_len=spec.dataset.max_length,
        target_len=spec.dataset.target_max_length,
        gradient_checkpointing=t.gradient_checkpointing,
        gpus_per_node=r.gpus_per_node,
        nodes=r.nodes,
        strategy=spec.distributed.strategy,
        deepspeed_stage=spec.distributed.deepspeed_stage,
        objective=spec.objective.type,
        completion_len=spec.objective.rl.max_completion_length
        if spec.objective.type in ("grpo", "rloo")
        else 0,
    )


@dataclass(frozen=True)
class Estimate:
    """Peak memory of one GPU process, in bytes, with what it is made of."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    overhead: int
    params: int
    trainable: int
    notes: tuple[str, ...] = field(default=())

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.overhead

    def gib(self) -> dict[str, float]:
        return {
            "weights": _gib(self.weights),
            "gradients": _gib(self.gradients),
            "optimizer": _gib(self.optimizer),
            "activations": _gib(self.activations),
            "overhead": _gib(self.overhead),
        }

    def describe(self) -> str:
        parts = ", ".join(f"{k} {v:g}" for k, v in self.gib().items())
        return f"~{_gib(self.total):g} GiB per GPU ({parts})"


def _gib(n: float) -> float:
    return round(n / GIB, 2)


# ------------------------------------------------------------------------------------------ parameters


@dataclass(frozen=True)
class _Tensor:
    """COUNT tensors of ROWS x COLS (COLS 1: a vector) stored in BYTES bytes per element."""

    rows: int
    cols: int
    count: int
    bytes: float

    @property
    def numel(self) -> int:
        return self.rows * self.cols * self.count


def _targeted(s: Settings, shape_: ModelShape) -> list:
    """The block linears an adapter goes on (PEFT's all-linear: every linear but the output head)."""
    if s.target_modules == "all-linear":
        return [x for x in shape_.linears if x.in_block or x.name not in (*shape_.head, "lm_head")]
    names = set(s.target_modules)
    return [x for x in shape_.linears if x.name in names and x.name not in shape_.head]


def _base_tensors(s: Settings, shape_: ModelShape) -> list[_Tensor]:
    """Every parameter of the base model as loaded for training, in its stored size."""
    # full and head-only keep fp32 master weights (bf16/fp16 come from autocast)
    per = 4.0 if s.method in ("full", "head-only") else float(s.compute_bytes)
    out = []
    for x in shape_.linears:
        weight = per
        if s.method == "qlora" and x.in_block:
            # bitsandbytes: 4-bit values + an fp32 absmax per 64 (double quant: 8-bit absmax per 64 and an
            # fp32 one per 256 blocks of those); 8-bit: int8 + an fp32 scale per row
            weight = (
                (0.5 + (1 / 64 + 4 / (64 * 256) if s.double_quant else 4 / 64)) if s.quant_bits == 4 else 1.0
            )
        elif s.method == "qlora":
            weight = 4.0  # prepare_model_for_kbit_training turns the unquantized ones to fp32
        out.append(_Tensor(x.fan_out, x.fan_in, x.count, weight))
        if x.bias:
            out.append(_Tensor(x.fan_out, 1, x.count, 4.0 if s.method == "qlora" else per))
    stored = 4.0 if s.method == "qlora" else per
    for t in shape_.tensors:
        if t.kind == "norm" and t.params % shape_.hidden == 0:  # vectors of the hidden width
            out.append(_Tensor(shape_.hidden, 1, t.params // shape_.hidden, stored))
        elif t.kind == "embedding" and t.params % shape_.hidden == 0:  # tables of hidden-wide rows
            out.append(_Tensor(t.params // shape_.hidden, shape_.hidden, 1, stored))
        else:
            out.append(_Tensor(t.params, 1, 1, stored))
    return out


def _trainable_tensors(s: Settings, shape_: ModelShape) -> list[_Tensor]:
    """The parameters the optimizer updates (adapters in fp32, as PEFT keeps them)."""
    if s.method == "full":
        return [replace(t, bytes=4.0) for t in _base_tensors(s, shape_)]
    head = [x for x in shape_.linears if x.name in shape_.head]
    head_tensors = [_Tensor(x.fan_out, x.fan_in + (1 if x.bias else 0), x.count, 4.0) for x in head]
    head_tensors += [_Tensor(t.params, 1, 1, 4.0) for t in shape_.tensors if t.name in shape_.head]
    if s.task not in ("sequence-classification", "token-classification", "question-answering", "masked-lm"):
        head_tensors = []  # an LM head is frozen (tied to the embeddings, or untouched)
    if s.method == "head-only":
        blocks = min(s.head_only_layers, shape_.layers)
        per_block = shape_.block_linear_params / max(1, shape_.layers)
        extra = [_Tensor(int(per_block), 1, blocks, 4.0)] if blocks else []
        return head_tensors + extra
    if s.method in ("lora", "qlora"):
        adapters = [
            t
            for x in _targeted(s, shape_)
            for t in (_Tensor(s.lora_r, x.fan_in, x.count, 4.0), _Tensor(x.fan_out, s.lora_r, x.count, 4.0))
        ]
        return adapters + head_tensors
    if s.method == "ia3":
        names = IA3_TARGETS.get(shape_.model_type, IA3_DEFAULT)
        feedforward = names[-1]
        vectors = [
            _Tensor(x.fan_in if x.name == feedforward else x.fan_out, 1, x.count, 4.0)
            for x in shape_.linears
            if x.name in names and x.in_block
        ]
        return vectors + head_tensors
    if s.method == "prefix-tuning":
        # a key and a value per virtual token and block, as wide as the (grouped) key projection
        return [_Tensor(s.virtual_tokens, 2 * shape_.kv_dim * shape_.decoder_layers, 1, 4.0)]
    # prompt-tuning: one embedding per virtual token (twice for encoder-decoders: PEFT's transformer submodules)
    return [_Tensor(s.virtual_tokens * (2 if shape_.encoder_decoder else 1), shape_.hidden, 1, 4.0)]


def _optimizer_bytes(s: Settings, tensors: list[_Tensor]) -> float:
    if s.optimizer == "adafactor":
        # factored second moment (a row and a column vector) for matrices, full for vectors; no momentum
        return sum(t.count * ((t.rows + t.cols) if t.cols > 1 else t.rows) * 4.0 for t in tensors)
    if s.optimizer in ("adamw-8bit", "paged-adamw-8bit"):
        # two uint8 states with an fp32 absmax per 256 values; small tensors keep 32-bit state
        return sum(
            t.numel * (2 + 8 / 256) if t.rows * t.cols >= BNB_MIN_8BIT_SIZE else t.numel * 8.0
            for t in tensors
        )
    return sum(t.numel * 2 * t.bytes for t in tensors)  # AdamW: exp_avg and exp_avg_sq like the parameter


def _size(tensors: list[_Tensor]) -> float:
    return sum(t.numel * t.bytes for t in tensors)


# ------------------------------------------------------------------------------------------ activations


def _layer_elements(s: Settings, shape_: ModelShape) -> float:
    """Elements autograd keeps per token and block.

    Every block keeps the residual-stream inputs of its two norms, attention's q, k, v and output (SDPA and
    flash kernels keep no attention matrix) and the MLP's intermediate values (gate, up and the activation;
    the activation's input in an ungated MLP). Full fine-tuning also keeps the inputs of the trainable
    linears (the normed x shared by q/k/v and by gate/up, the attention output, the MLP product). Frozen
    linears keep nothing; each LoRA layer keeps its own dropped-out input (a copy when dropout > 0, and
    its mask) and its r-wide hidden value."""
    h, kv, inter = shape_.hidden, shape_.kv_dim, shape_.intermediate
    elements = 2 * h + (2 * h + 2 * kv) + (3 if shape_.gated_mlp else 1) * inter
    if not shape_.gated_mlp:
        elements += 2 * h  # LayerNorm outputs kept for the biased linears after them, GELU's output
    if s.method == "full":
        elements += 2 * h + h + inter
    elif s.method in ("lora", "qlora"):
        targeted = [x for x in _targeted(s, shape_) if x.in_block]
        per_layer = sum(x.count for x in targeted) / max(1, shape_.layers)
        inputs = sum(x.fan_in * x.count for x in targeted) / max(1, shape_.layers)
        if s.lora_dropout > 0:
            elements += inputs * 1.25  # the dropped-out copy and its one-byte mask
        else:
            elements += min(inputs, 2 * h + inter)  # the shared inputs, as full fine-tuning keeps them
        elements += per_layer * s.lora_r + inter  # r-wide hidden values; the MLP product for down_proj
    return elements


@dataclass(frozen=True)
class ActivationParts:
    """Bytes of one step's activations: what autograd saves in the forward pass, and the peak's transient
    rest (the logits' gradient; with gradient checkpointing, one block recomputed in the backward pass)."""

    saved: float
    transient: float
    notes: tuple[str, ...] = ()

    @property
    def total(self) -> float:
        return self.saved + self.transient


def activation_parts(s: Settings, shape_: ModelShape) -> ActivationParts:
    notes: list[str] = []
    b = s.batch_size * (2 if s.objective == "dpo" else 1)  # chosen and rejected in one batch
    seq = s.seq_len + s.completion_len + (s.virtual_tokens if s.method == "prompt-tuning" else 0)
    element = s.compute_bytes
    per_layer = _layer_elements(s, shape_) * element
    layers = shape_.layers
    if s.method == "head-only":
        layers = min(s.head_only_layers, shape_.layers)  # no gradient flows below the trainable blocks
    if shape_.encoder_decoder:
        tokens_enc, tokens_dec = b * s.seq_len, b * s.target_len
        enc, dec = shape_.layers - shape_.decoder_layers, shape_.decoder_layers
        if s.method == "head-only":
            enc, dec = 0, layers
        # a decoder block has a cross-attention too: about a third more
        saved = per_layer * (tokens_enc * enc + tokens_dec * dec * 4 / 3)
        tokens, out_tokens = tokens_enc + tokens_dec, tokens_dec
        widest = per_layer * max(tokens_enc, tokens_dec)
    else:
        tokens = out_tokens = b * seq
        saved = per_layer * tokens * layers
        widest = per_layer * tokens
    transient = 0.0
    if s.gradient_checkpointing and layers:
        # each block keeps only its input; one block's activations exist again while it is recomputed
        saved = shape_.hidden * element * tokens * layers
        transient += widest
    if s.task in ("causal-lm", "seq2seq", "masked-lm"):
        # the logits (compute dtype) and their fp32 log-softmax are saved; the gradient comes in the backward
        saved += out_tokens * shape_.vocab * (s.compute_bytes + 4)
        transient += out_tokens * shape_.vocab * 4
    if s.method != "head-only" or layers:
        saved += tokens * shape_.hidden * element  # the embeddings' output
    if s.objective in ("grpo", "rloo"):
        notes.append("grpo/rloo: the generation's KV cache and the reward models are not counted")
    return ActivationParts(saved, transient, tuple(notes))


# ------------------------------------------------------------------------------------------ the estimate


def estimate_shape(shape_: ModelShape, s: Settings) -> Estimate:
    """The per-GPU estimate of a model of SHAPE trained with S."""
    base = _base_tensors(s, shape_)
    trainable = _trainable_tensors(s, shape_)
    weights = _size(base)
    if s.method != "full":
        weights += _size(trainable)  # adapters (and PEFT's trainable copy of a task head) beside the base
    if s.objective in ("dpo", "kto") and s.method == "full":
        weights *= 2  # a frozen reference model; adapter methods use the base with adapters off
    gradients = _size(trainable)
    optimizer = _optimizer_bytes(s, trainable)
    world = s.world
    notes = list(shape_.notes)
    if world > 1 and s.strategy in ("fsdp", "deepspeed"):
        stage = 3 if s.strategy == "fsdp" else s.deepspeed_stage
        optimizer /= world
        if stage >= 2:
            gradients /= world
        if stage >= 3:
            # each rank keeps a shard and gathers one block (two while prefetching) to compute
            block = weights / max(1, shape_.layers)
            weights = weights / world + 2 * block
    parts = activation_parts(s, shape_)
    notes += parts.notes
    if s.method == "qlora" and not s.gradient_checkpointing:
        notes.append("qlora usually runs with gradient checkpointing (training.gradientCheckpointing)")
    return Estimate(
        weights=int(weights),
        gradients=int(gradients),
        optimizer=int(optimizer),
        activations=int(parts.total),
        overhead=OVERHEAD_BYTES,
        params=shape_.params,
        trainable=int(sum(t.numel for t in trainable)),
        notes=tuple(notes),
    )


def estimate(spec: FineTuneJobSpec, config: Mapping[str, Any]) -> Estimate:
    """Peak GPU memory per GPU of SPEC's run, from the model's CONFIG (config.json as a dict)."""
    return estimate_shape(shape(config, spec.model.task, spec.model.num_labels), settings_for(spec))


# ------------------------------------------------------------------------------------------ GPU memory


def gpu_memory_from_labels(labels: Mapping[str, str]) -> int | None:
    """Bytes of one GPU from GPU feature discovery's labels (memory in MiB, else the product name)."""
    raw = labels.get(GPU_MEMORY_LABEL)
    if raw and raw.strip().isdigit():
        return int(raw) * MIB
    product = labels.get(GPU_PRODUCT_LABEL)
    if not product:
        return None
    found = re.search(r"(\d+)\s*GB", product, re.IGNORECASE)
    if found:  # GPU makers' "80GB" is 80 GiB of HBM (GPU feature discovery reports 81559 MiB usable of it)
        return int(found.group(1)) * 1024 * MIB
    upper = product.upper()
    for name, mib in sorted(KNOWN_GPUS.items(), key=lambda kv: -len(kv[0])):
        if re.search(rf"(^|[-_ ]){re.escape(name)}($|[-_ ])", upper):
            return mib * MIB
    return None


# ------------------------------------------------------------------------------------------ the verdict


@dataclass(frozen=True)
class Verdict:
    estimate: Estimate
    available: int | None
    """Bytes of one GPU (None: unknown)."""
    source: str | None = None
    """Where the available figure comes from (a node label, nodeSelector, a flag)."""
    alternatives: tuple[str, ...] = ()

    @property
    def fits(self) -> bool | None:
        return None if self.available is None else self.estimate.total <= self.available

    def message(self) -> str:
        needs = f"needs {self.estimate.describe()}"
        if self.available is None:
            return f"{needs}; the GPUs' memory is unknown (no {GPU_MEMORY_LABEL} label)"
        have = f"{_gib(self.available):g} GiB available" + (f" ({self.source})" if self.source else "")
        if self.fits:
            return f"{needs}, {have}"
        advice = ", or ".join(self.alternatives) if self.alternatives else "no setting of this spec fits"
        return f"{needs}, {have}: use {advice}"


def verdict(
    spec: FineTuneJobSpec,
    config: Mapping[str, Any],
    available: int | None,
    source: str | None = None,
) -> Verdict:
    """The estimate of SPEC against AVAILABLE bytes per GPU, with what would fit when it does not."""
    shape_ = shape(config, spec.model.task, spec.model.num_labels)
    s = settings_for(spec)
    found = estimate_shape(shape_, s)
    if available is None or found.total <= available:
        return Verdict(found, available, source)
    return Verdict(found, available, source, tuple(alternatives(shape_, s, available)))


def alternatives(shape_: ModelShape, s: Settings, available: int, limit: int = 3) -> list[str]:
    """Up to LIMIT changes of S, smallest first, whose estimate fits in AVAILABLE bytes."""

    def fits(candidate: Settings) -> float | None:
        total = estimate_shape(shape_, candidate).total
        return total if total <= available else None

    found: list[str] = []

    def add(text: str, candidate: Settings) -> None:
        total = fits(candidate)
        if total is not None and len(found) < limit:
            found.append(f"{text} (~{_gib(total):g} GiB)")

    if not s.gradient_checkpointing:
        add("gradientCheckpointing: true", replace(s, gradient_checkpointing=True))
    ckpt = replace(s, gradient_checkpointing=True)
    for batch in (s.batch_size // 2, s.batch_size // 4, 2, 1):
        if 1 <= batch < s.batch_size and fits(replace(ckpt, batch_size=batch)) is not None:
            accumulate = math.ceil(s.batch_size / batch)
            add(
                f"batchSize {batch} with gradient checkpointing (gradientAccumulationSteps x{accumulate} keeps "
                "the effective batch)",
                replace(ckpt, batch_size=batch),
            )
            break
    qlora_ok = s.task in ("causal-lm", "seq2seq")
    if s.method in ("full", "lora", "head-only") and qlora_ok:
        add("method qlora (4-bit) with gradient checkpointing", replace(ckpt, method="qlora"))
    if s.method == "full":
        add("method lora with gradient checkpointing", replace(ckpt, method="lora"))
        if s.optimizer == "adamw":
            add("optimizer adamw-8bit", replace(s, optimizer="adamw-8bit"))
    for gpus in (2, 4, 8):
        if gpus > s.gpus_per_node and s.strategy != "fsdp":
            candidate = replace(s, gpus_per_node=gpus, strategy="fsdp")
            if fits(candidate) is not None:
                add(f"{gpus} GPUs per node with distributed.strategy fsdp", candidate)
                break
        elif gpus > s.gpus_per_node:
            candidate = replace(s, gpus_per_node=gpus)
            if fits(candidate) is not None:
                add(f"{gpus} GPUs per node", candidate)
                break
    return found


# ------------------------------------------------------------------------------------------ the operator's check


REASON_DOES_NOT_FIT = "DoesNotFit"


@dataclass(frozen=True)
class GpuMemory:
    """What the operator knows of the GPUs a run may land on."""

    available: int | None = None
    """Bytes of one GPU (the smallest of the node types the pods may be scheduled to); None: unknown."""
    source: str | None = None
    """Where that figure comes from, for the message (a node label, resources.nodeSelector)."""


def gpu_memory_of_nodes(
    node_selector: Mapping[str, str], gpu_resource: str, nodes: Sequence[Mapping[str, Any]]
) -> GpuMemory:
    """The GPU memory of the node types the run's pods may use: NODE_SELECTOR's own GPU labels when it names
    them, else the smallest GPU among NODES (as the API returns them) that match it and offer GPU_RESOURCE."""
    own = gpu_memory_from_labels(node_selector)
    if own is not None:
        return GpuMemory(own, "resources.nodeSelector")
    found: list[tuple[int, str]] = []
    for node in nodes:
        meta, status = node.get("metadata") or {}, node.get("status") or {}
        labels = meta.get("labels") or {}
        if any(labels.get(k) != v for k, v in node_selector.items()):
            continue
        offered = (status.get("allocatable") or status.get("capacity") or {}).get(gpu_resource)
        if offered in (None, "0", 0):
            continue
        memory = gpu_memory_from_labels(labels)
        if memory is not None:
            label = GPU_MEMORY_LABEL if labels.get(GPU_MEMORY_LABEL) else GPU_PRODUCT_LABEL
            found.append((memory, f"node {meta.get('name')}'s {label}"))
    if not found:
        return GpuMemory()
    return GpuMemory(*min(found))


def estimate_status(
    spec: FineTuneJobSpec,
    config: Mapping[str, Any] | None,
    why_unknown: str | None,
    gpus: GpuMemory,
    run_id: str,
) -> tuple[dict[str, Any], bool]:
    """status.estimate of SPEC's run RUN_ID from the model's CONFIG (None: unread, WHY_UNKNOWN says why) on
    GPUS, and whether the run must not start (it cannot fit and does not skip the check)."""
    base: dict[str, Any] = {"configHash": run_id}
    if config is None:
        return {**base, "message": f"not estimated: {why_unknown}"}, False
    try:
        found = verdict(spec, config, gpus.available, gpus.source)
    except ValueError as error:  # ShapeError: the config lacks a dimension
        return {**base, "message": f"not estimated: {error}"}, False
    e = found.estimate
    status = {
        **base,
        "perGpuGiB": _gib(e.total),
        "breakdown": e.gib(),
        "fits": found.fits,
        "params": e.params,
        "trainableParams": e.trainable,
        "modelType": str(config.get("model_type") or "unknown"),
        "message": found.message(),
    }
    if gpus.available is not None:
        status.update(availableGiB=_gib(gpus.available), availableFrom=gpus.source)
    refuse = found.fits is False and not spec.resources.skip_fit_check
    if found.fits is False and spec.resources.skip_fit_check:
        status["message"] += " (resources.skipFitCheck: started anyway)"
    return status, refuse
