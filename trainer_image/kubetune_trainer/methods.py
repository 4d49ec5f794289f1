"""Adapt the base model with the FineTuneJob's method: full, head-only, LoRA, QLoRA, prefix, prompt, IA3.

``apply_method`` returns the model to train and the result kind (adapter | full | prefix | prompt).
"""

from __future__ import annotations

import fnmatch
import re

from kubetune.api.v1alpha1 import MethodSpec, ModelSpec

from .errors import ConfigError

PEFT_TASK_TYPES = {
    "causal-lm": "CAUSAL_LM",
    "seq2seq": "SEQ_2_SEQ_LM",
    "sequence-classification": "SEQ_CLS",
    "token-classification": "TOKEN_CLS",
    "masked-lm": None,  # PEFT has no masked-LM task type: a plain PeftModel passes labels through
    "question-answering": "QUESTION_ANS",
}
RESULT_KINDS = {
    "full": "full",
    "head-only": "full",
    "lora": "adapter",
    "qlora": "adapter",
    "ia3": "adapter",
    "prefix-tuning": "prefix",
    "prompt-tuning": "prompt",
}
CLASSIFIER_HEADS = r"(.*\.)?(classifier|score|qa_outputs)(\..*)?"
# tasks whose new head is trained in full (PEFT's modules_to_save), never given an adapter
HEAD_TASKS = ("sequence-classification", "token-classification", "question-answering")
# head-only's default trainable [classifier] stands for the task's head where the head has another name
DEFAULT_HEAD_ONLY = ["classifier"]
TASK_HEADS = {
    # the prediction head over the (tied, frozen) word embeddings: BERT/ALBERT/DeBERTa, RoBERTa, DistilBERT, ELECTRA
    "masked-lm": ["predictions.", "lm_head.", "vocab_transform.", "vocab_layer_norm.", "vocab_projector.",
                  "generator_lm_head."],
    "question-answering": ["qa_outputs"],
}  # fmt: skip
# the masked-LM heads' dense + layer norm before the (tied) decoder: BERT/DeBERTa, RoBERTa, DistilBERT
MLM_HEAD_TRANSFORMS = ["predictions.transform.dense", "predictions.transform.LayerNorm", "lm_head.dense",
                       "lm_head.layer_norm", "vocab_transform", "vocab_layer_norm"]  # fmt: skip
MLM_HEAD_PATTERN = r"(.*\.)?(" + "|".join(re.escape(m) for m in MLM_HEAD_TRANSFORMS) + r")(\..*)?"
ENCODER_RESULT_KINDS = ("masked-lm", "question-answering")  # a whole model of these tasks is its own kind
DTYPES = {"bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}


def torch_dtype(name: str):
    import torch

    return getattr(torch, DTYPES[name])


def bnb_config(method: MethodSpec):
    """The BitsAndBytesConfig of a qlora spec (4-bit nf4/fp4 with double quant, or 8-bit)."""
    from transformers import BitsAndBytesConfig

    q = method.quantization
    if q.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.type,
        bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=torch_dtype(q.compute_dtype),
    )


def lora_config(method: MethodSpec, task: str):
    from peft import LoraConfig

    lora = method.lora
    exclude_modules: str | None = None  # None: PEFT's defaults
    modules_to_save: list[str] | None = None
    if task in HEAD_TASKS and lora.target_modules == "all-linear":
        # the classification head is trained in full (PEFT's modules_to_save), not given an adapter
        exclude_modules = CLASSIFIER_HEADS
    if task == "masked-lm":
        # the prediction head's transform is trained in full and saved with the adapter: a base without a
        # masked-LM head (e.g. a sentence encoder) gets a new random one, which the adapter alone would not hold
        modules_to_save = MLM_HEAD_TRANSFORMS
        exclude_modules = MLM_HEAD_PATTERN
    return LoraConfig(
        r=lora.r,
        # peft annotates lora_alpha as int, but only divides by it (alpha / r): a fractional alpha is valid
        lora_alpha=lora.alpha,  # type: ignore[arg-type]
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        bias=lora.bias,
        task_type=PEFT_TASK_TYPES[task],
        exclude_modules=exclude_modules,
        modules_to_save=modules_to_save,
    )


def peft_config(
    method: MethodSpec, model_spec: ModelSpec, tokenizer_path: str | None = None, revision: str | None = None
):
    """The PEFT config of an adapter method (None for full and head-only)."""
    from peft import IA3Config, PrefixTuningConfig, PromptTuningConfig, PromptTuningInit

    task_type = PEFT_TASK_TYPES[model_spec.task]
    kind = method.type
    if kind in ("lora", "qlora"):
        return lora_config(method, model_spec.task)
    if kind == "ia3":
        # masked-lm: the head's transform is saved with the adapter, as in lora_config
        head = MLM_HEAD_TRANSFORMS if model_spec.task == "masked-lm" else None  # None: PEFT's default
        return IA3Config(task_type=task_type, modules_to_save=head)
    if kind == "prefix-tuning":
        return PrefixTuningConfig(
            task_type=task_type, num_virtual_tokens=method.prefix_tuning.num_virtual_tokens
        )
    if kind == "prompt-tuning":
        pt = method.prompt_tuning
        if pt.init_text:
            return PromptTuningConfig(
                task_type=task_type,
                num_virtual_tokens=pt.num_virtual_tokens,
                prompt_tuning_init=PromptTuningInit.TEXT,
                prompt_tuning_init_text=pt.init_text,
                tokenizer_name_or_path=tokenizer_path,
                tokenizer_kwargs={"revision": revision} if revision else None,
            )
        return PromptTuningConfig(task_type=task_type, num_virtual_tokens=pt.num_virtual_tokens)
    return None


def _layer_list(model):
    """The model's stack of transformer blocks (the longest ModuleList named layers/layer/h/block)."""
    import torch

    best = None
    for name, module in model.named_modules():
        is_stack = isinstance(module, torch.nn.ModuleList) and re.search(
            r"(^|\.)(layers|layer|h|block|blocks)$", name
        )
        if is_stack and (best is None or len(module) > len(best[1])):
            best = (name, module)
    return best


def freeze_for_head_only(model, patterns: list[str], last_layers: int) -> list[str]:
    """Freeze everything but parameters matching patterns (substring or glob) and the last N blocks."""
    trainable_prefixes: list[str] = []
    if last_layers:
        found = _layer_list(model)
        if found is None:
            raise ConfigError("method.headOnly.unfreezeLastLayers: cannot find this model's list of layers")
        name, layers = found
        start = max(0, len(layers) - last_layers)
        trainable_prefixes = [f"{name}.{i}." for i in range(start, len(layers))]
    kept = []
    for pname, param in model.named_parameters():
        keep = any(p in pname or fnmatch.fnmatch(pname, p) for p in patterns) or any(
            pname.startswith(prefix) for prefix in trainable_prefixes
        )
        param.requires_grad = keep
        if keep:
            kept.append(pname)
    if not any(any(p in name or fnmatch.fnmatch(name, p) for p in patterns) for name in kept):
        top = sorted({n.split(".")[0] for n, _ in model.named_parameters()})
        raise ConfigError(
            f"method.headOnly.trainable {patterns} matches no parameter of this model; its top-level modules are "
            f"{', '.join(top)} (classification heads are usually 'classifier' or 'score', LM heads 'lm_head')"
        )
    return kept


def apply_method(
    model,
    method: MethodSpec,
    model_spec: ModelSpec,
    *,
    gradient_checkpointing: bool = False,
    tokenizer_path: str | None = None,
    revision: str | None = None,
):
    """Return (model to train, result kind)."""
    kind = RESULT_KINDS[method.type]
    if kind == "full" and model_spec.task in ENCODER_RESULT_KINDS:
        kind = model_spec.task  # a whole masked-lm or question-answering model
    if method.type == "full":
        return model, kind
    if method.type == "head-only":
        patterns = method.head_only.trainable
        if patterns == DEFAULT_HEAD_ONLY and model_spec.task in TASK_HEADS:
            patterns = TASK_HEADS[model_spec.task]
        freeze_for_head_only(model, patterns, method.head_only.unfreeze_last_layers)
        return model, kind
    from peft import get_peft_model, prepare_model_for_kbit_training

    if method.type == "qlora":
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    config = peft_config(method, model_spec, tokenizer_path, revision)
    try:
        model = get_peft_model(model, config)
    except (ValueError, KeyError) as error:
        raise ConfigError(f"method {method.type} cannot be applied to this model: {error}") from None
    if gradient_checkpointing and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()
    return model, kind


def count_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
