"""Toy learnable datasets and helpers shared by the trainer tests (fixtures are in conftest.py)."""

from __future__ import annotations

import json
import random
from pathlib import Path

CAPITALS = [
    ("France", "Paris"),
    ("Japan", "Tokyo"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Egypt", "Cairo"),
    ("Peru", "Lima"),
    ("Chile", "Santiago"),
    ("Kenya", "Nairobi"),
]
POSITIVE = ["good", "great", "happy", "lovely", "fine", "nice"]
NEGATIVE = ["bad", "awful", "sad", "poor", "terrible", "ugly"]
COLORS = ["red", "green", "blue", "yellow"]
ANIMALS = ["cat", "dog", "horse", "bird"]
FILLER = ["the", "a", "saw", "near", "with", "and"]
TAGS = ["O", "COLOR", "ANIMAL"]


def capitals_rows(repeat: int = 6) -> list[dict]:
    return [{"prompt": f"The capital of {c} is", "completion": f" {k}"} for c, k in CAPITALS] * repeat


def sentiment_rows(n: int = 64, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = rng.choices(POSITIVE if label else NEGATIVE, k=3) + rng.choices(FILLER, k=2)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


def tagging_rows(n: int = 48, seed: int = 1) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        tokens, tags = [], []
        for _ in range(6):
            kind = rng.choice(TAGS)
            word = rng.choice({"O": FILLER, "COLOR": COLORS, "ANIMAL": ANIMALS}[kind])
            tokens.append(word)
            tags.append(kind)
        rows.append({"tokens": tokens, "tags": tags})
    return rows


def corpus() -> list[str]:
    lines = [r["prompt"] + r["completion"] for r in capitals_rows(1)]
    lines += [r["text"] for r in sentiment_rows(200)]
    lines += [" ".join(r["tokens"]) for r in tagging_rows(200)]
    lines += [
        "### Instruction: Give the capital of the country. ### Input: ### Response:",
        "<|user|> <|assistant|> <|system|> capital: summarize: copy:",
    ] * 3
    return lines


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def job_config(
    tmp_path: Path,
    model_path: Path | str,
    data_path: Path | str,
    *,
    name: str = "t",
    out_name: str = "out",
    **spec,
) -> object:
    """A local TrainerConfig for a tiny run; spec keys are the API's (camelCase) sections merged over defaults."""
    from kubetune.api.v1alpha1 import FineTuneJob
    from kubetune_trainer.config import local_config

    body = {
        "model": {"uri": f"file://{model_path}"},
        "dataset": {"uri": f"file://{data_path}", "maxLength": 48},
        "method": {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
        "training": {"maxSteps": 12, "learningRate": 5e-3, "batchSize": 8},
        "checkpoints": {"everySteps": 1000, "keepLast": 1},
    }
    for key, value in spec.items():
        if isinstance(value, dict) and isinstance(body.get(key), dict):
            body[key] = {**body[key], **value}
        else:
            body[key] = value
    doc = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": body,
    }
    job = FineTuneJob.model_validate(doc, context={"target": "local"})
    return local_config(job, str(tmp_path / out_name))


def logged_losses(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
