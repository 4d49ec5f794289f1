"""A model's shape from its config.json (never its weights): every parameter tensor group, by what it is.

Pure arithmetic over the config's dimensions, so the operator, ``kubetune validate`` and the trainer can all
count a model without torch. ``shape(config, task, num_labels)`` knows the families kubetune's examples and
tests use (Llama-style decoders: llama, mistral, mixtral, qwen2/3, gemma; gpt2; bert, roberta, xlm-roberta,
distilbert; t5, mt5; bart, mbart); other decoders are counted as Llama-shaped from the usual config keys,
with a note saying so. ``fit.py`` turns a shape into a memory estimate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

LLAMA_LIKE = ("llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "gemma", "gemma2", "gemma3_text")
BERT_LIKE = ("bert", "roberta", "xlm-roberta", "camembert", "electra")
T5_LIKE = ("t5", "mt5", "umt5")
BART_LIKE = ("bart", "mbart")


class ShapeError(ValueError):
    """The config does not say enough to count the model."""


@dataclass(frozen=True)
class Linear:
    """``count`` linear layers named ``name`` (the module's last name, as target_modules match it)."""

    name: str
    fan_in: int
    fan_out: int
    bias: bool
    count: int
    in_block: bool = True
    """Inside a transformer block (adapters and quantization apply); else a head or pooler."""

    @property
    def params(self) -> int:
        return self.count * (self.fan_in * self.fan_out + (self.fan_out if self.bias else 0))


@dataclass(frozen=True)
class Tensors:
    """Parameters that are not block linears: embeddings, norms, position tables, heads."""

    name: str
    params: int
    kind: str = "other"
    """embedding | norm | head | other (quantization leaves all of them unquantized)."""


@dataclass(frozen=True)
class ModelShape:
    model_type: str
    hidden: int
    layers: int
    """Transformer blocks (encoder + decoder)."""
    decoder_layers: int
    """Blocks a prefix of virtual tokens reaches (the decoder's; all of them for encoder-only models)."""
    vocab: int
    intermediate: int
    heads: int
    kv_dim: int
    """Width of the key (and value) projections: kv heads x head dim."""
    linears: tuple[Linear, ...]
    tensors: tuple[Tensors, ...]
    head: tuple[str, ...] = ()
    """Names of the task head's parameter groups (linears or tensors), trained in full by adapter methods."""
    encoder_decoder: bool = False
    gated_mlp: bool = True
    experts: int = 1
    """Mixture-of-experts models: experts per block (each token runs through ``experts_per_token``)."""
    experts_per_token: int = 1
    notes: tuple[str, ...] = field(default=())

    @property
    def params(self) -> int:
        return sum(x.params for x in self.linears) + sum(t.params for t in self.tensors)

    @property
    def block_linear_params(self) -> int:
        return sum(x.params for x in self.linears if x.in_block)

    def head_params(self) -> int:
        groups: list[Linear | Tensors] = [*self.linears, *self.tensors]
        return sum(x.params for x in groups if x.name in self.head)


def _int(config: Mapping[str, Any], *keys: str, default: int | None = None) -> int:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    if default is not None:
        return default
    raise ShapeError(f"config.json has none of {', '.join(keys)}")


def shape(config: Mapping[str, Any], task: str = "causal-lm", num_labels: int | None = None) -> ModelShape:
    """The parameter groups of the model CONFIG describes, loaded for TASK (its head sized to NUM_LABELS)."""
    model_type = str(config.get("model_type") or "")
    labels = num_labels or 2
    if model_type == "gpt2":
        return _gpt2(config, task, labels)
    if model_type in BERT_LIKE:
        return _bert(config, task, labels)
    if model_type == "distilbert":
        return _distilbert(config, task, labels)
    if model_type in T5_LIKE:
        return _t5(config, task, labels)
    if model_type in BART_LIKE:
        return _bart(config, task, labels)
    notes: tuple[str, ...] = ()
    if model_type not in LLAMA_LIKE:
        notes = (
            f"model_type {model_type or '(none)'} is counted as a Llama-shaped decoder from hidden_size, "
            "num_hidden_layers, intermediate_size and vocab_size: an approximation",
        )
    return _llama(config, task, labels, notes)


# ------------------------------------------------------------------------------------------ decoders


def _decoder_head(task: str, hidden: int, vocab: int, labels: int, tied: bool, score_bias: bool):
    """Linears and names of a decoder's task head: lm_head (untied) or a score / qa_outputs layer."""
    if task in ("sequence-classification", "token-classification"):
        bias = task == "token-classification" and score_bias
        return [Linear("score", hidden, labels, bias, 1, in_block=False)], ("score",)
    if task == "question-answering":
        return [Linear("qa_outputs", hidden, 2, True, 1, in_block=False)], ("qa_outputs",)
    if tied:
        return [], ("lm_head",)
    return [Linear("lm_head", hidden, vocab, False, 1, in_block=False)], ("lm_head",)


def _llama(config: Mapping[str, Any], task: str, labels: int, notes: tuple[str, ...]) -> ModelShape:
    h = _int(config, "hidden_size", "n_embd", "d_model")
    n = _int(config, "num_hidden_layers", "n_layer", "num_layers")
    heads = _int(config, "num_attention_heads", "n_head")
    kv_heads = _int(config, "num_key_value_heads", default=heads)
    head_dim = _int(config, "head_dim", default=h // heads)
    inter = _int(config, "intermediate_size", "n_inner", default=4 * h)
    vocab = _int(config, "vocab_size")
    model_type = str(config.get("model_type") or "")
    qkv_bias = bool(config.get("attention_bias")) or model_type in ("qwen2", "qwen2_moe")
    out_bias = bool(config.get("attention_bias")) and model_type not in ("qwen2", "qwen2_moe")
    mlp_bias = bool(config.get("mlp_bias"))
    q, kv = heads * head_dim, kv_heads * head_dim
    experts = _int(config, "num_local_experts", "num_experts", default=1)
    per_token = _int(config, "num_experts_per_tok", default=1) if experts > 1 else 1
    moe_inter = _int(config, "moe_intermediate_size", default=inter) if experts > 1 else inter
    linears = [
        Linear("q_proj", h, q, qkv_bias, n),
        Linear("k_proj", h, kv, qkv_bias, n),
        Linear("v_proj", h, kv, qkv_bias, n),
        Linear("o_proj", q, h, out_bias, n),
    ]
    if experts > 1:
        # Mixtral names its experts' projections w1 (gate), w3 (up), w2 (down); the router is "gate"
        linears += [
            Linear("w1", h, moe_inter, False, n * experts),
            Linear("w3", h, moe_inter, False, n * experts),
            Linear("w2", moe_inter, h, False, n * experts),
            Linear("gate", h, experts, False, n),
        ]
    else:
        linears += [
            Linear("gate_proj", h, inter, mlp_bias, n),
            Linear("up_proj", h, inter, mlp_bias, n),
            Linear("down_proj", inter, h, mlp_bias, n),
        ]
    norms = 2 * h * n + h
    if model_type == "qwen3":
        norms += 2 * head_dim * n  # q_norm, k_norm
    if model_type in ("gemma2", "gemma3_text"):
        norms += 2 * h * n  # pre/post feedforward norms
    tied = bool(config.get("tie_word_embeddings", model_type.startswith("gemma")))
    head, head_names = _decoder_head(task, h, vocab, labels, tied, True)
    return ModelShape(
        model_type=model_type or "unknown",
        hidden=h,
        layers=n,
        decoder_layers=n,
        vocab=vocab,
        intermediate=moe_inter * per_token if experts > 1 else inter,
        heads=heads,
        kv_dim=kv,
        linears=(*linears, *head),
        tensors=(Tensors("embed_tokens", vocab * h, "embedding"), Tensors("norm", norms, "norm")),
        head=head_names,
        experts=experts,
        experts_per_token=per_token,
        notes=notes,
    )


def _gpt2(config: Mapping[str, Any], task: str, labels: int) -> ModelShape:
    h = _int(config, "n_embd")
    n = _int(config, "n_layer")
    heads = _int(config, "n_head")
    inter = _int(config, "n_inner", default=4 * h)
    vocab = _int(config, "vocab_size")
    positions = _int(config, "n_positions", "n_ctx", default=1024)
    linears = [
        Linear("c_attn", h, 3 * h, True, n),
        Linear("c_proj", h, h, True, n),  # attn.c_proj
        Linear("c_fc", h, inter, True, n),
        Linear("c_proj", inter, h, True, n),  # mlp.c_proj
    ]
    head, head_names = _decoder_head(
        task, h, vocab, labels, bool(config.get("tie_word_embeddings", True)), True
    )
    if task == "token-classification":
        head = [Linear("classifier", h, labels, True, 1, in_block=False)]
        head_names = ("classifier",)
    return ModelShape(
        model_type="gpt2",
        hidden=h,
        layers=n,
        decoder_layers=n,
        vocab=vocab,
        intermediate=inter,
        heads=heads,
        kv_dim=h,
        linears=(*linears, *head),
        tensors=(
            Tensors("wte", vocab * h, "embedding"),
            Tensors("wpe", positions * h, "embedding"),
            Tensors("ln", 4 * h * n + 2 * h, "norm"),
        ),
        head=head_names,
        gated_mlp=False,
    )


# ------------------------------------------------------------------------------------------ encoders


def _encoder_head(
    task: str, h: int, vocab: int, labels: int, pooled_classifier: bool, mlm_names: tuple[str, str]
) -> tuple[list[Linear], list[Tensors], tuple[str, ...]]:
    """BERT-style heads: (linears, tensors, head names). POOLED_CLASSIFIER: BERT's pooler + classifier;
    else RoBERTa's classification head (dense + out_proj)."""
    if task == "sequence-classification":
        if pooled_classifier:
            return (
                [
                    Linear("dense", h, h, True, 1, in_block=False),
                    Linear("classifier", h, labels, True, 1, False),
                ],
                [],
                ("classifier",),
            )
        return (
            [Linear("dense", h, h, True, 1, in_block=False), Linear("out_proj", h, labels, True, 1, False)],
            [],
            ("dense", "out_proj"),
        )
    if task == "token-classification":
        return [Linear("classifier", h, labels, True, 1, in_block=False)], [], ("classifier",)
    if task == "question-answering":
        return [Linear("qa_outputs", h, 2, True, 1, in_block=False)], [], ("qa_outputs",)
    # masked-lm (and anything else): the prediction head's transform and the decoder's bias (weight tied)
    dense, norm = mlm_names
    return (
        [Linear(dense, h, h, True, 1, in_block=False)],
        [Tensors(norm, 2 * h, "head"), Tensors("decoder_bias", vocab, "head")],
        (dense, norm, "decoder_bias"),
    )


def _bert(config: Mapping[str, Any], task: str, labels: int) -> ModelShape:
    h = _int(config, "hidden_size")
    n = _int(config, "num_hidden_layers")
    inter = _int(config, "intermediate_size", default=4 * h)
    vocab = _int(config, "vocab_size")
    positions = _int(config, "max_position_embeddings", default=512)
    types = _int(config, "type_vocab_size", default=2)
    model_type = str(config.get("model_type"))
    linears = [
        Linear("query", h, h, True, n),
        Linear("key", h, h, True, n),
        Linear("value", h, h, True, n),
        Linear("dense", h, h, True, n),  # attention.output.dense
        Linear("dense", h, inter, True, n),  # intermediate.dense
        Linear("dense", inter, h, True, n),  # output.dense
    ]
    mlm = ("dense", "LayerNorm") if model_type == "bert" else ("dense", "layer_norm")
    head, head_tensors, names = _encoder_head(task, h, vocab, labels, model_type in ("bert", "electra"), mlm)
    if model_type == "electra" and task == "sequence-classification":
        head, names = head[:1] + [Linear("out_proj", h, labels, True, 1, False)], ("dense", "out_proj")
    return ModelShape(
        model_type=model_type,
        hidden=h,
        layers=n,
        decoder_layers=n,
        vocab=vocab,
        intermediate=inter,
        heads=_int(config, "num_attention_heads"),
        kv_dim=h,
        linears=(*linears, *head),
        tensors=(
            Tensors("word_embeddings", vocab * h, "embedding"),
            Tensors("position_embeddings", positions * h, "embedding"),
            Tensors("token_type_embeddings", types * h, "embedding"),
            Tensors("LayerNorm", 2 * h + 4 * h * n, "norm"),
            *head_tensors,
        ),
        head=names,
        gated_mlp=False,
    )


def _distilbert(config: Mapping[str, Any], task: str, labels: int) -> ModelShape:
    h = _int(config, "dim", "hidden_size")
    n = _int(config, "n_layers", "num_hidden_layers")
    inter = _int(config, "hidden_dim", default=4 * h)
    vocab = _int(config, "vocab_size")
    positions = _int(config, "max_position_embeddings", default=512)
    linears = [
        Linear("q_lin", h, h, True, n),
        Linear("k_lin", h, h, True, n),
        Linear("v_lin", h, h, True, n),
        Linear("out_lin", h, h, True, n),
        Linear("lin1", h, inter, True, n),
        Linear("lin2", inter, h, True, n),
    ]
    tensors = [
        Tensors("word_embeddings", vocab * h, "embedding"),
        Tensors("position_embeddings", positions * h, "embedding"),
        Tensors("LayerNorm", 2 * h + 4 * h * n, "norm"),
    ]
    if task == "sequence-classification":
        head = [
            Linear("pre_classifier", h, h, True, 1, False),
            Linear("classifier", h, labels, True, 1, False),
        ]
        names: tuple[str, ...] = ("pre_classifier", "classifier")
    elif task == "token-classification":
        head, names = [Linear("classifier", h, labels, True, 1, False)], ("classifier",)
    elif task == "question-answering":
        head, names = [Linear("qa_outputs", h, 2, True, 1, False)], ("qa_outputs",)
    else:
        head = [Linear("vocab_transform", h, h, True, 1, False)]
        tensors += [
            Tensors("vocab_layer_norm", 2 * h, "head"),
            Tensors("vocab_projector_bias", vocab, "head"),
        ]
        names = ("vocab_transform", "vocab_layer_norm", "vocab_projector_bias")
    return ModelShape(
        model_type="distilbert",
        hidden=h,
        layers=n,
        decoder_layers=n,
        vocab=vocab,
        intermediate=inter,
        heads=_int(config, "n_heads", "num_attention_heads"),
        kv_dim=h,
        linears=(*linears, *head),
        tensors=tuple(tensors),
        head=names,
        gated_mlp=False,
    )


# ------------------------------------------------------------------------------------------ encoder-decoders


def _t5(config: Mapping[str, Any], task: str, labels: int) -> ModelShape:
    h = _int(config, "d_model")
    d_kv = _int(config, "d_kv", default=64)
    heads = _int(config, "num_heads")
    d_ff = _int(config, "d_ff")
    enc = _int(config, "num_layers")
    dec = _int(config, "num_decoder_layers", default=enc)
    vocab = _int(config, "vocab_size")
    buckets = _int(config, "relative_attention_num_buckets", default=32)
    gated = str(config.get("feed_forward_proj") or "relu").startswith("gated")
    inner = heads * d_kv
    attentions = enc + 2 * dec  # encoder self, decoder self + cross
    linears = [
        Linear("q", h, inner, False, attentions),
        Linear("k", h, inner, False, attentions),
        Linear("v", h, inner, False, attentions),
        Linear("o", inner, h, False, attentions),
    ]
    if gated:
        linears += [Linear("wi_0", h, d_ff, False, enc + dec), Linear("wi_1", h, d_ff, False, enc + dec)]
    else:
        linears += [Linear("wi", h, d_ff, False, enc + dec)]
    linears += [Linear("wo", d_ff, h, False, enc + dec)]
    tied = bool(config.get("tie_word_embeddings", str(config.get("model_type")) == "t5"))
    head = [] if tied else [Linear("lm_head", h, vocab, False, 1, in_block=False)]
    return ModelShape(
        model_type=str(config.get("model_type")),
        hidden=h,
        layers=enc + dec,
        decoder_layers=dec,
        vocab=vocab,
        intermediate=d_ff,
        heads=heads,
        kv_dim=inner,
        linears=(*linears, *head),
        tensors=(
            Tensors("shared", vocab * h, "embedding"),
            Tensors("relative_attention_bias", 2 * buckets * heads, "embedding"),
            Tensors("layer_norm", h * (2 * enc + 3 * dec + 2), "norm"),
        ),
        head=("lm_head",),
        encoder_decoder=True,
        gated_mlp=gated,
    )


def _bart(config: Mapping[str, Any], task: str, labels: int) -> ModelShape:
    h = _int(config, "d_model")
    enc = _int(config, "encoder_layers")
    dec = _int(config, "decoder_layers")
    enc_ff = _int(config, "encoder_ffn_dim")
    dec_ff = _int(config, "decoder_ffn_dim", default=enc_ff)
    vocab = _int(config, "vocab_size")
    positions = _int(config, "max_position_embeddings", default=1024)
    mbart = config.get("model_type") == "mbart"
    attentions = enc + 2 * dec
    linears = [
        Linear("q_proj", h, h, True, attentions),
        Linear("k_proj", h, h, True, attentions),
        Linear("v_proj", h, h, True, attentions),
        Linear("out_proj", h, h, True, attentions),
        Linear("fc1", h, enc_ff, True, enc),
        Linear("fc2", enc_ff, h, True, enc),
        Linear("fc1", h, dec_ff, True, dec),
        Linear("fc2", dec_ff, h, True, dec),
    ]
    offset = 0 if mbart else 2  # BartLearnedPositionalEmbedding keeps 2 extra rows
    norms = 2 * h * (2 * enc + 3 * dec) + 2 * 2 * h + (2 * 2 * h if mbart else 0)
    tied = bool(config.get("tie_word_embeddings", True))
    head = [] if tied else [Linear("lm_head", h, vocab, False, 1, in_block=False)]
    return ModelShape(
        model_type=str(config.get("model_type")),
        hidden=h,
        layers=enc + dec,
        decoder_layers=dec,
        vocab=vocab,
        intermediate=max(enc_ff, dec_ff),
        heads=_int(config, "decoder_attention_heads", "encoder_attention_heads"),
        kv_dim=h,
        linears=(*linears, *head),
        tensors=(
            Tensors("shared", vocab * h, "embedding"),
            Tensors("embed_positions", 2 * (positions + offset) * h, "embedding"),
            Tensors("layer_norm", norms, "norm"),
        ),
        head=("lm_head",),
        encoder_decoder=True,
        gated_mlp=False,
    )
