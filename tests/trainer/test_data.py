"""Datasets: formats, detection, renames, splits, label mapping, and bad data failing with a message that
names the column or file. Also the https SSRF rule on resolved addresses."""

from __future__ import annotations

import json
import socket

import pytest

from kubetune.api.v1alpha1 import DatasetSpec, ModelSpec
from kubetune_trainer import data as data_mod
from kubetune_trainer import objectives, sources
from kubetune_trainer.errors import DataError

from .toy import write_jsonl

pytestmark = pytest.mark.trainer


@pytest.fixture(scope="module")
def tokenizer(assets):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(assets["tokenizer"])


def prep(path, tokenizer, task="causal-lm", objective="sft", model=None, **dataset):
    spec = DatasetSpec.model_validate({"uri": f"file://{path}", "maxLength": 64, **dataset})
    model_spec = ModelSpec.model_validate({"uri": "file:///m", "task": task, **(model or {})})
    return data_mod.prepare(spec, model_spec, tokenizer, 0, objectives.get(objective))


def test_prompt_completion_trains_on_the_completion_only(datasets_dir, tokenizer):
    prepared = prep(datasets_dir / "capitals.jsonl", tokenizer)
    assert prepared.format == "prompt-completion"
    row = prepared.train[0]
    learned = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100]
    assert tokenizer.decode(learned, skip_special_tokens=True).strip() == "Paris"
    assert learned[-1] == tokenizer.eos_token_id


def test_messages_loss_only_on_assistant_tokens(datasets_dir, tokenizer):
    prepared = prep(datasets_dir / "messages.jsonl", tokenizer)
    assert prepared.format == "messages"
    row = prepared.train[0]
    learned = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100]
    text = tokenizer.decode(learned, skip_special_tokens=True)
    assert "Paris" in text and "capital" not in text and "user" not in text
    assert tokenizer.decode(row["input_ids"]).count("capital of France") == 1


def test_messages_with_the_specs_chat_template(tmp_path, tokenizer):
    path = write_jsonl(
        tmp_path / "chat.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "red"},
                    {"role": "user", "content": "again"},
                    {"role": "assistant", "content": "blue"},
                ]
            }
        ],
    )
    template = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    )
    prepared = prep(path, tokenizer, chatTemplate=template)
    row = prepared.train[0]
    learned = tokenizer.decode(
        [t for t, lab in zip(row["input_ids"], row["labels"], strict=True) if lab != -100]
    )
    assert "red" in learned and "blue" in learned and "hi" not in learned and "again" not in learned


def test_columns_rename_and_instruction_format(tmp_path, tokenizer):
    path = write_jsonl(
        tmp_path / "alpaca.jsonl", [{"q": "Give the capital.", "ctx": "France", "a": "Paris"}] * 4
    )
    prepared = prep(path, tokenizer, columns={"instruction": "q", "input": "ctx", "output": "a"})
    assert prepared.format == "instruction"
    assert "### Input:\nFrance" in prepared.samples[0].prompt


def test_classification_string_labels_map_to_ids(tmp_path, tokenizer):
    path = write_jsonl(
        tmp_path / "s.jsonl", [{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}] * 3
    )
    prepared = prep(
        path, tokenizer, task="sequence-classification", model={"numLabels": 2, "labels": ["neg", "pos"]}
    )
    assert prepared.train["labels"][:2] == [1, 0]
    assert prepared.label_names == ["neg", "pos"]


def test_token_tags_align_labels_to_first_subword(datasets_dir, tokenizer):
    prepared = prep(
        datasets_dir / "tagging.jsonl",
        tokenizer,
        task="token-classification",
        model={"numLabels": 3, "labels": ["O", "COLOR", "ANIMAL"]},
    )
    row = prepared.train[0]
    assert row["labels"][0] == -100  # <s>
    assert sum(1 for label in row["labels"] if label != -100) == 6  # one label per word


def test_seq2seq_prefix_and_eval_fraction_and_max_samples(datasets_dir, tokenizer):
    prepared = prep(
        datasets_dir / "seq2seq.jsonl",
        tokenizer,
        task="seq2seq",
        sourcePrefix="capital: ",
        evalFraction=0.25,
        maxSamples=10,
    )
    assert len(prepared.train) == 10
    assert tokenizer.decode(prepared.train[0]["input_ids"], skip_special_tokens=True).startswith("capital:")
    assert prepared.eval is not None and len(prepared.eval) > 0


def test_split_files_in_a_folder_and_digest_is_stable(tmp_path, tokenizer):
    rows = [{"text": f"the cat {i}"} for i in range(6)]
    write_jsonl(tmp_path / "d" / "train.jsonl", rows)
    write_jsonl(tmp_path / "d" / "validation.jsonl", rows[:2])
    a = prep(tmp_path / "d", tokenizer, evalSplit="validation")
    b = prep(tmp_path / "d", tokenizer, evalSplit="validation")
    assert len(a.eval) == 2 and a.digest == b.digest
    write_jsonl(tmp_path / "d" / "validation.jsonl", rows[:3])
    assert prep(tmp_path / "d", tokenizer, evalSplit="validation").digest != a.digest


def test_parquet_csv_and_saved_dataset(tmp_path, tokenizer):
    import datasets

    ds = datasets.Dataset.from_list([{"text": "the red cat", "label": 1}, {"text": "bad", "label": 0}])
    ds.to_parquet(str(tmp_path / "x.parquet"))
    ds.to_csv(str(tmp_path / "x.csv"), index=False)
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "saved"))
    for path in (tmp_path / "x.parquet", tmp_path / "x.csv", tmp_path / "saved"):
        prepared = prep(path, tokenizer, task="sequence-classification", model={"numLabels": 2})
        assert prepared.train["labels"] == [1, 0], path


# ---------------------------------------------------------------- bad data


def test_missing_column_is_named(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "answer": "b"}] * 3)
    with pytest.raises(DataError, match="'completion'"):
        prep(path, tokenizer, format="prompt-completion")


def test_renamed_column_that_does_not_exist_is_named(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "p.jsonl", [{"review": "a", "label": 1}] * 3)
    with pytest.raises(DataError, match="'sentence'.*dataset.columns.text"):
        prep(
            path,
            tokenizer,
            task="sequence-classification",
            model={"numLabels": 2},
            columns={"text": "sentence"},
        )


def test_auto_detection_failure_is_clear(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "p.jsonl", [{"foo": "a", "bar": "b"}] * 3)
    with pytest.raises(DataError, match=r"cannot tell the dataset format.*foo, bar"):
        prep(path, tokenizer)


def test_empty_file_and_empty_split_are_named(tmp_path, tokenizer):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="empty.jsonl.* is empty"):
        prep(tmp_path / "empty.jsonl", tokenizer)
    import datasets

    (tmp_path / "d").mkdir()
    datasets.Dataset.from_dict({"text": ["a", "b"]}).to_parquet(str(tmp_path / "d" / "train.parquet"))
    datasets.Dataset.from_dict(
        {"text": []}, features=datasets.Features({"text": datasets.Value("string")})
    ).to_parquet(str(tmp_path / "d" / "test.parquet"))
    with pytest.raises(DataError, match="split 'test' is empty"):
        prep(tmp_path / "d", tokenizer, evalSplit="test")


def test_label_out_of_range_is_named(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "l.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 5}])
    with pytest.raises(DataError, match=r"column 'label' has label 5, out of range 0\.\.1"):
        prep(path, tokenizer, task="sequence-classification", model={"numLabels": 2})


def test_unknown_label_name_is_named(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "l.jsonl", [{"text": "a", "label": "pos"}, {"text": "b", "label": "meh"}])
    with pytest.raises(DataError, match="'meh'"):
        prep(
            path, tokenizer, task="sequence-classification", model={"numLabels": 2, "labels": ["neg", "pos"]}
        )


def test_unparseable_file_is_named(tmp_path, tokenizer):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps({"text": "ok"}) + "\n{not json\n")
    with pytest.raises(DataError, match="broken.jsonl"):
        prep(path, tokenizer)


def test_null_value_names_column_and_row(tmp_path, tokenizer):
    path = write_jsonl(
        tmp_path / "n.jsonl", [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": None}]
    )
    with pytest.raises(DataError, match="column 'completion' is empty in row 1"):
        prep(path, tokenizer)


def test_missing_path_and_wrong_suffix(tmp_path, tokenizer):
    with pytest.raises(DataError, match="does not exist"):
        prep(tmp_path / "nope.jsonl", tokenizer)
    (tmp_path / "x.xml").write_text("<a/>")
    with pytest.raises(DataError, match="x.xml"):
        prep(tmp_path / "x.xml", tokenizer)


def test_preference_data_needs_dpo(datasets_dir, tokenizer):
    with pytest.raises(DataError, match="objective.type dpo"):
        prep(datasets_dir / "preference.jsonl", tokenizer)
    prepared = prep(datasets_dir / "preference.jsonl", tokenizer, objective="dpo", format="preference")
    assert set(prepared.train.column_names) == {"prompt", "chosen", "rejected"}


# ---------------------------------------------------------------- https SSRF at fetch time


def test_https_rejects_hosts_that_resolve_to_private_addresses(monkeypatch, tmp_path):
    def fake_getaddrinfo(host, port, *args, **kwargs):
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", port)),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    with pytest.raises(DataError, match=r"resolves to 10\.0\.0\.7.*private"):
        sources.download_https("https://data.example.com/train.jsonl", tmp_path)


def test_https_rejects_metadata_address(monkeypatch, tmp_path):
    monkeypatch.setattr(
        socket,
        "getaddrinfo",
        lambda host, port, *a, **k: [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", port))],
    )
    with pytest.raises(DataError, match="link-local"):
        sources.download_https("https://rebind.example.com/x.jsonl", tmp_path)


def test_https_literal_private_host_rejected_before_resolving(tmp_path):
    from kubetune.api.v1alpha1 import URIError

    with pytest.raises(URIError):
        sources.download_https("https://127.0.0.1/x.jsonl", tmp_path)
