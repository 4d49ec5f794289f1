"""masked-lm data: long texts become consecutive windows (no text lost), empty rows are dropped, bad rows and
tokenizers without a mask token fail with the reason."""

from __future__ import annotations

import datasets
import pytest

from kubetune.api.v1alpha1 import DatasetSpec, ModelSpec
from kubetune_trainer import data as data_mod
from kubetune_trainer import mlm
from kubetune_trainer.errors import ConfigError, DataError

from .encoder_toy import domain_rows, encoder_corpus
from .toy import write_jsonl

pytestmark = pytest.mark.trainer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from kubetune_trainer import tiny

    return tiny.build_tokenizer(encoder_corpus(), tmp_path_factory.mktemp("mlm-tok"), vocab_size=400)


def spec(**fields) -> DatasetSpec:
    return DatasetSpec.model_validate({"uri": "file:///data/notes.jsonl", "maxLength": 16, **fields})


def test_long_text_is_cut_into_windows_without_losing_tokens(tokenizer):
    text = " ".join(row["text"] for row in domain_rows(6))
    windows = mlm.tokenize(
        datasets.Dataset.from_list([{"text": text}, {"text": ""}]), spec(), tokenizer, "train"
    )
    whole = tokenizer(text, add_special_tokens=False)["input_ids"]
    room = 16 - tokenizer.num_special_tokens_to_add()  # content tokens per window
    assert len(windows) == -(-len(whole) // room) > 1
    special = set(tokenizer.all_special_ids)
    assert all(len(ids) <= 16 for ids in windows["input_ids"])
    content = [t for ids in windows["input_ids"] for t in ids if t not in special]
    assert content == whole  # every token once, in order; the empty row made no window
    assert set(windows.column_names) == {"input_ids", "attention_mask"} | (
        {"token_type_ids"} if "token_type_ids" in windows.column_names else set()
    )


def test_collator_masks_about_mlm_probability_of_the_tokens(tokenizer):
    from transformers import DataCollatorForLanguageModeling

    windows = mlm.tokenize(
        datasets.Dataset.from_list(domain_rows(64)), spec(maxLength=32), tokenizer, "train"
    )
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.3, seed=0)
    batch = collator([windows[i] for i in range(len(windows))])
    real = batch["attention_mask"].bool() & ~specials_except_mask(batch["input_ids"], tokenizer)
    masked = (batch["labels"] != -100).sum().item() / real.sum().item()
    assert 0.22 < masked < 0.38, masked


def specials_except_mask(ids, tokenizer):
    """Special tokens in a masked batch (the mask token stands where a real token was)."""
    import torch

    return torch.isin(ids, torch.tensor(tokenizer.all_special_ids)) & (ids != tokenizer.mask_token_id)


def test_a_row_without_text_names_the_row(tokenizer):
    rows = datasets.Dataset.from_list([{"text": "the cat"}, {"text": None}])
    with pytest.raises(DataError, match="column 'text' is empty in row 1 of split 'train'"):
        mlm.tokenize(rows, spec(), tokenizer, "train")


def test_only_empty_text_is_an_error(tokenizer):
    with pytest.raises(DataError, match="no text to learn from"):
        mlm.tokenize(datasets.Dataset.from_list([{"text": ""}] * 3), spec(), tokenizer, "train")


def test_tokenizer_without_mask_token_is_refused(tmp_path):
    from transformers import ByT5Tokenizer

    path = write_jsonl(tmp_path / "notes.jsonl", domain_rows(4))
    dataset = DatasetSpec.model_validate({"uri": f"file://{path}", "maxLength": 16})
    model = ModelSpec.model_validate({"uri": "hf://google/byt5-small", "task": "masked-lm"})
    with pytest.raises(ConfigError, match="masked-lm needs a tokenizer with a mask token.*byt5-small"):
        data_mod.prepare(dataset, model, ByT5Tokenizer())
