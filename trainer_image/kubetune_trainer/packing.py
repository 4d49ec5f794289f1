"""Packed batches as rows, for attention implementations without varlen kernels (sdpa, eager, flex).

TRL's padding-free collator flattens a packed batch into ONE row with ``position_ids`` restarting at each
document. flash-attention turns that into varlen kernels (attention within each document); sdpa and eager
instead get a dense block-causal mask over the whole row, so attention costs (B x L)^2 instead of B x L^2.
``RowPackedCollator`` keeps TRL's best-fit bins as batch rows (B, longest bin <= maxLength), without an
attention mask and with per-document ``position_ids``: transformers' masking_utils detects the packed sequences
from the position ids (``find_packed_sequence_indices``) and builds a per-row block-diagonal causal mask.

Not every model passes ``position_ids`` to its mask (ALiBi models such as Bloom, PEFT prompt learning, which
drops them), so ``packs_rows`` checks the model itself: a document packed behind another must give the logits
it gives alone. Where it does not, the trainer keeps TRL's flattened path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

log = logging.getLogger(__name__)


@dataclass
class RowPackedCollator(DataCollatorForLanguageModeling):
    """Packed examples (``input_ids``, ``labels``, ``seq_lengths``) -> rows padded to the longest one, with
    per-document ``position_ids`` and no ``attention_mask``; labels are -100 on each document's first token
    (no predicting a document from the one before it) and on padding (whose position ids are 0)."""

    padding_free: bool = False
    return_position_ids: bool = True

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = super().torch_call(examples)
        batch.pop("attention_mask", None)  # a mask would switch off packed-sequence detection
        batch["labels"][batch["position_ids"] == 0] = -100
        return batch


def attn_implementation(model) -> str:
    config = getattr(model, "config", None)
    return str(getattr(config, "_attn_implementation", None) or "")


def packs_rows(model) -> bool:
    """Whether the model keeps the documents of a row apart by their position ids alone.

    False with flash-attention (its varlen path over TRL's flattened row is the better one) and when a probe
    says no: two 4-token documents packed in one row, the second one's logits compared with the same document
    run alone and with the same row under a plain causal mask. Three forward passes of 8 tokens."""
    if "flash" in attn_implementation(model):
        return False
    import torch

    try:
        params = next(model.parameters())
        text_config = (
            model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        )
        vocab = int(getattr(text_config, "vocab_size", 0) or 0)
        ids = (torch.arange(8, device=params.device) * 7 + 3) % max(vocab, 1)
        ids = ids.unsqueeze(0)
        pos = torch.arange(4, device=params.device).repeat(2).unsqueeze(0)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                # no cache, as in training (Trainer sets config.use_cache = args.use_cache, False): with one,
                # masking_utils does not look for packed sequences
                packed = model(input_ids=ids, position_ids=pos, use_cache=False).logits[0, -4:].float()
                alone = (
                    model(input_ids=ids[:, 4:], position_ids=pos[:, 4:], use_cache=False)
                    .logits[0, -4:]
                    .float()
                )
                causal = model(
                    input_ids=ids, position_ids=pos, attention_mask=torch.ones_like(ids), use_cache=False
                ).logits[0, -4:]
        finally:
            model.train(was_training)
        apart = float((packed - alone).abs().max())
        mixed = float((packed - causal.float()).abs().max())
    except Exception as error:  # an unusual model: keep TRL's path
        log.info(
            "packing: probe failed (%s: %s); keeping padding-free flattened batches",
            type(error).__name__,
            error,
        )
        return False
    ok = apart < mixed
    if not ok:
        log.info(
            "packing: %s does not separate packed documents by position ids (difference to the document "
            "alone %.3g, to a plain causal row %.3g); keeping padding-free flattened batches",
            type(model).__name__,
            apart,
            mixed,
        )
    return ok
