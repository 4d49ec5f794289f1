"""Packing without flash-attention: packed bins are collated as rows with per-document position ids, and no
document attends to another: each document's logits and per-token losses inside a packed row equal those of
the same document run alone (tiny random Llama and GPT-2). Families that cannot keep documents apart by
position ids (Bloom: ALiBi, no position ids in its mask) and flash-attention keep TRL's flattened row."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F

from kubetune_trainer.objectives import sft
from kubetune_trainer.packing import RowPackedCollator, packs_rows
from kubetune_trainer.train import run_training

from .toy import job_config, logged_losses

pytestmark = pytest.mark.trainer

# Two packed bins (as TRL's bfd packing makes them): documents of 5, 9 and 4 tokens; of 7 and 6 tokens.
BINS = [(5, 9, 4), (7, 6)]


def packed_features(pad_id: int, vocab: int, seed: int = 0):
    """(features for the collator, [(row, start, document ids)])."""
    g = torch.Generator().manual_seed(seed)
    features, docs = [], []
    for row, lengths in enumerate(BINS):
        ids, start = [], 0
        for n in lengths:
            doc = torch.randint(0, vocab, (n,), generator=g)
            doc[doc == pad_id] = (pad_id + 1) % vocab
            docs.append((row, start, doc))
            ids += doc.tolist()
            start += n
        features.append({"input_ids": ids, "labels": list(ids), "seq_lengths": list(lengths)})
    return features, docs


def load(path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path))
    assert model.config._attn_implementation in ("sdpa", "eager")
    return model.eval()


def test_collator_makes_rows_with_per_document_positions():
    features, docs = packed_features(pad_id=0, vocab=50)
    batch = RowPackedCollator(pad_token_id=0)(features)
    assert "attention_mask" not in batch
    assert batch["input_ids"].shape == (2, 18)  # rows padded to the longest bin, not one flattened row
    assert batch["position_ids"].tolist() == [
        [*range(5), *range(9), *range(4)],
        [*range(7), *range(6), 0, 0, 0, 0, 0],
    ]
    for row, start, doc in docs:
        assert batch["input_ids"][row, start : start + len(doc)].tolist() == doc.tolist()
        assert batch["labels"][row, start] == -100  # no predicting a document from the one before it
        assert batch["labels"][row, start + 1 : start + len(doc)].tolist() == doc[1:].tolist()
    assert (batch["labels"][1, 13:] == -100).all() and (batch["input_ids"][1, 13:] == 0).all()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_no_cross_document_attention_in_packed_rows(assets, arch):
    model = load(assets[arch])
    pad_id = model.config.pad_token_id
    assert packs_rows(model)
    features, docs = packed_features(pad_id, model.config.vocab_size)
    batch = RowPackedCollator(pad_token_id=pad_id)(features)
    with torch.no_grad():
        out = model(**batch, use_cache=False)
        # the control: the same rows under a plain causal mask do mix documents
        mixed = model(
            input_ids=batch["input_ids"],
            position_ids=batch["position_ids"],
            attention_mask=torch.ones_like(batch["input_ids"]),
            use_cache=False,
        ).logits
        alone_losses = []
        for row, start, doc in docs:
            alone = model(input_ids=doc[None], use_cache=False).logits[0]
            packed = out.logits[row, start : start + len(doc)]
            torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-4)
            # per-token losses of the document, packed (labels from the collator) and alone
            labels = batch["labels"][row, start + 1 : start + len(doc)]
            packed_loss = F.cross_entropy(packed[:-1], labels, reduction="none")
            alone_loss = F.cross_entropy(alone[:-1], doc[1:], reduction="none")
            torch.testing.assert_close(packed_loss, alone_loss, atol=1e-5, rtol=1e-4)
            alone_losses.append(alone_loss)
            if start > 0:
                assert not torch.allclose(mixed[row, start : start + len(doc)], alone, atol=1e-3)
    # the model's loss over the packed batch is the token mean of the documents' losses alone
    torch.testing.assert_close(out.loss, torch.cat(alone_losses).mean(), atol=1e-5, rtol=1e-5)


def fake_trainer(padding_free: bool = True):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    collator = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=padding_free)
    return types.SimpleNamespace(data_collator=collator, args=types.SimpleNamespace(use_cache=False))


def test_families_without_position_id_packing_are_refused_without_flash_attention(assets, tmp_path):
    """Bloom (ALiBi) would let packed documents attend to each other on sdpa/eager: packing is refused, clearly."""
    from transformers import BloomConfig, BloomForCausalLM

    from kubetune_trainer.errors import ConfigError

    torch.manual_seed(0)
    bloom = BloomForCausalLM(BloomConfig(vocab_size=400, hidden_size=64, n_layer=2, n_head=4)).eval()
    assert not packs_rows(bloom)  # ALiBi: its mask ignores position ids
    trainer = fake_trainer()
    with pytest.raises(ConfigError, match=r"dataset.packing: .*BloomForCausalLM.*packing: false"):
        sft.use_packed_rows(trainer, bloom)

    llama = load(assets["llama"])
    trainer = fake_trainer()
    assert sft.use_packed_rows(trainer, llama)
    assert isinstance(trainer.data_collator, RowPackedCollator)


def test_flash_attention_keeps_the_flattened_path():
    flash = types.SimpleNamespace(config=types.SimpleNamespace(_attn_implementation="flash_attention_2"))
    assert not packs_rows(flash)
    trainer = fake_trainer()
    assert not sft.use_packed_rows(trainer, flash)
    assert trainer.data_collator.padding_free


def test_packed_rows_training_lowers_the_loss(assets, datasets_dir, tmp_path):
    config = job_config(
        tmp_path,
        assets["llama"],
        datasets_dir / "text.jsonl",
        dataset={"packing": True, "format": "text", "maxLength": 48},
        training={"maxSteps": 12, "learningRate": 5e-3, "batchSize": 4},
    )
    outcome = run_training(config)
    trainer = outcome.trainer
    assert isinstance(trainer.data_collator, RowPackedCollator)
    assert "seq_lengths" in trainer.train_dataset.column_names
    batch = next(iter(trainer.get_train_dataloader()))
    assert "attention_mask" not in batch
    assert batch["input_ids"].shape[0] > 1 and batch["input_ids"].shape[1] <= 48  # rows of at most maxLength
    pad_id = trainer.processing_class.pad_token_id
    real = batch["input_ids"][:, 1:] != pad_id
    assert ((batch["position_ids"][:, 1:] == 0) & real).any()  # rows hold more than one document
    losses = logged_losses(trainer)
    assert len(losses) >= 4, losses
    first, last = losses[0], sum(losses[-3:]) / 3
    assert last < first * 0.9, f"loss did not go down: first {first:.4f}, last {last:.4f} ({losses})"
