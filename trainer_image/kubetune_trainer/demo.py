"""`make demo`: build a tiny model, tokenizer and dataset on the fly and write a FineTuneJob that uses them.

    python -m kubetune_trainer.demo [DIR]        # writes DIR/finetunejob.yaml (DIR defaults to demo-output)
    kubetune train -f DIR/finetunejob.yaml --local --output DIR/result

The model is a random-weight Llama (2 layers, hidden 128) and the data asks for the capitals of countries in
several phrasings; some rows are held out for evaluation (exact-match of greedy generations). Nothing is downloaded.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import yaml

CAPITALS = [
    ("France", "Paris"),
    ("Japan", "Tokyo"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Egypt", "Cairo"),
    ("Peru", "Lima"),
    ("Chile", "Santiago"),
    ("Kenya", "Nairobi"),
    ("Norway", "Oslo"),
    ("Cuba", "Havana"),
    ("Greece", "Athens"),
    ("Canada", "Ottawa"),
    ("Austria", "Vienna"),
    ("Poland", "Warsaw"),
    ("Ireland", "Dublin"),
    ("Portugal", "Lisbon"),
]
# The country comes last in every phrasing, right before the answer.
PHRASES = [
    "The capital of",
    "Name the capital city of",
    "Which city is the capital of",
    "Tell me the capital of",
    "Where is the government seat of",
    "What is the main city of",
]


def write_demo(root: str | Path = "demo-output") -> Path:
    from . import tiny

    root = Path(root).absolute()
    root.mkdir(parents=True, exist_ok=True)
    rows = [{"prompt": f"{p} {c}", "completion": f" {k}"} for p in PHRASES for c, k in CAPITALS]
    random.Random(0).shuffle(rows)
    data = root / "capitals.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tokenizer = tiny.build_tokenizer(
        [r["prompt"] + r["completion"] for r in rows] * 2, root / "tokenizer", 400
    )
    tiny.build_model("llama", tokenizer, root / "tiny-llama", hidden=128, layers=2, heads=4)
    manifest = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "demo-capitals"},
        "spec": {
            "model": {"uri": f"file://{root / 'tiny-llama'}", "task": "causal-lm"},
            "dataset": {
                "uri": f"file://{data}",
                "format": "prompt-completion",
                "evalFraction": 0.15,
                "maxLength": 32,
            },
            "method": {"type": "full"},
            "training": {
                "maxSteps": 100,
                "learningRate": 5.0e-3,
                "batchSize": 16,
                "scheduler": "cosine",
                "warmupRatio": 0.05,
                "evalEvery": 50,
                "metrics": ["perplexity", "exact-match"],
            },
            "checkpoints": {"everySteps": 50, "keepLast": 1},
            "resources": {"gpusPerNode": 0},
        },
    }
    path = root / "finetunejob.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path = write_demo(argv[0] if argv else "demo-output")
    print(f"demo: wrote a tiny Llama, a tokenizer, a dataset and {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
