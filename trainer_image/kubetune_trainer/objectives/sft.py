"""sft: supervised fine-tuning on the task's own data, with the task's trainer: TRL's SFTTrainer (causal-lm, with
packing), Seq2SeqTrainer (seq2seq), and Trainer with the task's collator and metrics (classification, masked-lm
and question-answering: mlm.py, qa.py). Its rows are the task's tokenization (data.py)."""

from __future__ import annotations

from typing import Any

from kubetune.api.v1alpha1 import FineTuneJobSpec

from .. import metrics as metric_fns
from .. import mlm, qa
from ..errors import ConfigError
from .base import Objective, TrainerInputs


class SFT(Objective):
    def config_class(self, spec: FineTuneJobSpec) -> type:
        if spec.model.task == "causal-lm":
            from trl import SFTConfig

            return SFTConfig
        if spec.model.task == "seq2seq":
            from transformers import Seq2SeqTrainingArguments

            return Seq2SeqTrainingArguments
        from transformers import TrainingArguments

        return TrainingArguments

    def config_kwargs(self, spec: FineTuneJobSpec) -> dict[str, Any]:
        if spec.model.task == "causal-lm":
            return dict(
                max_length=spec.dataset.max_length,
                packing=spec.dataset.packing,
                packing_strategy="bfd",  # best-fit packing; rows or one flattened row: use_packed_rows
                eval_packing=False,
                dataset_text_field="text",
            )
        if spec.model.task == "seq2seq":
            generate = any(m in metric_fns.TEXT for m in spec.training.metrics)
            return dict(predict_with_generate=generate, generation_max_length=spec.dataset.target_max_length)
        return {}

    def build(self, inputs: TrainerInputs):
        import transformers

        spec, common, tokenizer = inputs.spec, inputs.common(), inputs.tokenizer
        task = spec.model.task
        if task == "causal-lm":
            from ..sft_head import SFTTrainer  # TRL's, with a plain LM head where its fused one has no kernel

            trainer = SFTTrainer(**common)
            if inputs.args.packing:
                use_packed_rows(trainer, inputs.model)
            return trainer
        if task == "masked-lm":
            return mlm.build_trainer(spec, common, tokenizer)
        if task == "question-answering":
            return qa.build_trainer(spec, common, tokenizer, inputs.data)
        compute_metrics = compute_metrics_for(spec, tokenizer)
        if task == "seq2seq":
            collator = transformers.DataCollatorForSeq2Seq(
                tokenizer, model=inputs.model, label_pad_token_id=-100
            )
            return transformers.Seq2SeqTrainer(
                data_collator=collator, compute_metrics=compute_metrics, **common
            )
        padding: transformers.DataCollatorForTokenClassification | transformers.DataCollatorWithPadding
        if task == "token-classification":
            padding = transformers.DataCollatorForTokenClassification(tokenizer)
        else:
            padding = transformers.DataCollatorWithPadding(tokenizer)
        return transformers.Trainer(data_collator=padding, compute_metrics=compute_metrics, **common)

    def final_metrics(self, trainer, tokenizer, data, spec: FineTuneJobSpec) -> dict[str, float]:
        """causal-lm's text metrics (rouge, bleu, exact-match): greedy generations for held-out prompts."""
        names = spec.training.metrics
        if spec.model.task != "causal-lm" or not any(n in metric_fns.TEXT for n in names):
            return {}
        return generation_scores(trainer.model, tokenizer, data.samples, names)


OBJECTIVE = SFT("sft")


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


def generation_scores(model, tokenizer, samples, names, max_new_tokens: int = 64) -> dict[str, float]:
    """Greedy generations for held-out prompts scored against the references (causal-lm text metrics)."""
    import torch

    predictions, references = [], []
    device = next(model.parameters()).device
    model.eval()
    for sample in samples[:32]:
        if not isinstance(sample.reference, str) or not sample.prompt:
            continue
        ids = sample.prompt_ids or tokenizer(sample.prompt, add_special_tokens=True)["input_ids"]
        want = len(tokenizer(sample.reference, add_special_tokens=False)["input_ids"]) + 4
        with torch.no_grad():
            out = model.generate(
                input_ids=torch.tensor([ids], device=device),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=device),
                max_new_tokens=min(max_new_tokens, want),
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        predictions.append(tokenizer.decode(out[0][len(ids) :], skip_special_tokens=True))
        references.append(sample.reference)
    if not predictions:
        return {}
    return {f"eval_{k}": v for k, v in metric_fns.text_scores(predictions, references, names).items()}


def use_packed_rows(trainer, model) -> bool:
    """Packed bins as rows of at most maxLength tokens (per-document position ids, no attention mask) instead of
    TRL's one flattened row, unless flash-attention (varlen kernels) or a model that cannot keep packed documents
    apart by position ids (see packing.py). SFTTrainer refuses a custom collator with padding-free packing, so
    the collator is swapped after construction; dataloaders read trainer.data_collator when they are built."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from .. import packing

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
