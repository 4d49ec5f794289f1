"""Toy data of the encoder tasks (masked-lm, question-answering) and a tiny BERT-like model that knows its words."""

from __future__ import annotations

import random
from pathlib import Path

from .toy import ANIMALS, COLORS, FILLER, corpus

ATTRIBUTES = {"color": COLORS, "pet": ANIMALS}


def qa_row(rng: random.Random, ask: str | None = None) -> dict:
    """A context with two facts among filler words; the question asks for one of them (SQuAD format)."""
    values = {name: rng.choice(words) for name, words in ATTRIBUTES.items()}
    facts = [f"the {name} is {value} ." for name, value in values.items()]
    rng.shuffle(facts)
    filler = [" ".join(rng.choices(FILLER, k=rng.randint(0, 4))) for _ in range(3)]
    context = " ".join(part for part in (filler[0], facts[0], filler[1], facts[1], filler[2]) if part)
    ask = ask or rng.choice(sorted(ATTRIBUTES))
    start = context.index(f"the {ask} is ") + len(f"the {ask} is ")
    return {
        "question": f"what is the {ask} ?",
        "context": context,
        "answers": {"text": [values[ask]], "answer_start": [start]},
    }


def qa_rows(n: int = 240, seed: int = 3) -> list[dict]:
    rng = random.Random(seed)
    return [qa_row(rng) for _ in range(n)]


def domain_rows(n: int = 160, seed: int = 4) -> list[dict]:
    """'In-domain' text for masked-lm: the same regular phrases again and again, so masked words are guessable."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        color, animal = rng.choice(COLORS), rng.choice(ANIMALS)
        rows.append({"text": f"the {animal} is {color} and the {animal} saw a {color} {animal} ."})
    return rows


def encoder_corpus() -> list[str]:
    rows = qa_rows(40)
    return corpus() + [f"{r['question']} {r['context']}" for r in rows] + [r["text"] for r in domain_rows(20)]


def build_encoder_assets(root: Path) -> dict[str, Path]:
    """A BPE tokenizer with a mask token and a tiny random BERT, saved under root."""
    from kubetune_trainer import tiny

    tokenizer = tiny.build_tokenizer(encoder_corpus(), root / "tokenizer", vocab_size=400)
    tiny.build_model("bert", tokenizer, root / "bert", task="base")
    return {"tokenizer": root / "tokenizer", "bert": root / "bert"}
