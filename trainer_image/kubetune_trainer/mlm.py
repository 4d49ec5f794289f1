"""Masked language modelling (domain adaptation of an encoder such as BERT before a classifier is trained on it).

Rows of plain text become windows of at most dataset.maxLength tokens: with a fast tokenizer a long text is
cut into consecutive windows rather than truncated. transformers' DataCollatorForLanguageModeling masks
dataset.mlmProbability of the tokens afresh in every batch (80% [MASK], 10% a random token, 10% unchanged)
and the loss is over the masked positions only, so exp(loss) is the masked-token perplexity.
"""

from __future__ import annotations

import logging
from typing import Any

from kubetune.api.v1alpha1 import DatasetSpec

from .errors import ConfigError, DataError

log = logging.getLogger("kubetune_trainer.mlm")

LABEL_NAMES = ("labels",)


def require_mask_token(tokenizer, model_uri: str) -> None:
    if tokenizer.mask_token is None:
        raise ConfigError(
            f"model.task masked-lm needs a tokenizer with a mask token and the one of {model_uri} has none; "
            "use an encoder pretrained with masking (BERT, RoBERTa, DeBERTa, ...)"
        )


def tokenize(ds, spec: DatasetSpec, tokenizer, split: str):
    """Windows of text tokens (input_ids, attention_mask[, token_type_ids]); labels come from the collator."""
    fast = getattr(tokenizer, "is_fast", False)
    if not fast:
        log.warning(
            "the tokenizer is a slow one: texts longer than dataset.maxLength (%d tokens) are truncated, "
            "not split into windows",
            spec.max_length,
        )

    def fn(batch: dict, indices: list[int]) -> dict:
        for text, index in zip(batch["text"], indices, strict=True):
            if not isinstance(text, str):
                what = "empty" if text is None else f"a {type(text).__name__}, not text"
                raise DataError(f"{spec.uri}: column 'text' is {what} in row {index} of split '{split}'")
        encoding = tokenizer(
            batch["text"],
            truncation=True,
            max_length=spec.max_length,
            return_overflowing_tokens=fast,
            return_special_tokens_mask=True,
        )
        encoding.pop("overflow_to_sample_mapping", None)
        # a window of special tokens only has nothing to mask (its loss would be 0/0)
        keep = [i for i, mask in enumerate(encoding["special_tokens_mask"]) if 0 in mask]
        return {
            key: [value[i] for i in keep] for key, value in encoding.items() if key != "special_tokens_mask"
        }

    windows = ds.map(
        fn, batched=True, with_indices=True, remove_columns=ds.column_names, desc=f"Tokenizing {split}"
    )
    if len(windows) == 0:
        raise DataError(f"{spec.uri}: split '{split}' has no text to learn from (every row is empty)")
    return windows


def build_trainer(spec, common: dict, tokenizer):
    """transformers.Trainer with DataCollatorForLanguageModeling (masking seeded by training.seed)."""
    import transformers

    collator = transformers.DataCollatorForLanguageModeling(
        tokenizer, mlm=True, mlm_probability=spec.dataset.mlm_probability, seed=spec.training.seed
    )
    trainer = transformers.Trainer(data_collator=collator, **common)
    trainer.label_names = list(LABEL_NAMES)  # a PEFT wrapper (no task type) hides them from the Trainer
    return trainer


def sample_prediction(model, tokenizer, sample) -> dict[str, Any] | None:
    """Mask the middle word-piece of a held-out text and show what the model puts there."""
    import torch

    text = " ".join(part for part in (sample.prompt, sample.reference) if isinstance(part, str) and part)
    limit = min(512, getattr(model.config, "max_position_embeddings", 512) or 512)
    ids = tokenizer(text, truncation=True, max_length=limit)["input_ids"]
    special = set(tokenizer.all_special_ids)
    positions = [i for i, token in enumerate(ids) if token not in special]
    if not positions:
        return None
    position = positions[len(positions) // 2]
    expected = tokenizer.decode([ids[position]]).strip()
    ids[position] = tokenizer.mask_token_id
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids], device=device)).logits[0, position]
    return {
        "input": tokenizer.decode(ids, skip_special_tokens=False),
        "output": tokenizer.decode([int(logits.argmax())]).strip(),
        "expected": expected,
    }
