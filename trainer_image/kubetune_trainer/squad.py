"""SQuAD's exact-match and F1, as the official evaluation script defines them (v1.1 and v2.0).

Both compare normalised text: lower case, punctuation and the articles a/an/the removed, whitespace
collapsed. A prediction is scored against every gold answer of its question and keeps the best. F1 is
over the bags of normalised tokens. A question without gold answers (SQuAD 2.0's unanswerable ones) counts
as answered correctly only by the empty prediction. kubetune reports both as fractions (0..1), like its
other metrics; the official script prints percentages.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation and articles, collapse whitespace (the official script's order)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str) -> float:
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not expected:  # no-answer on either side: right only when both are empty
        return float(predicted == expected)
    common = Counter(predicted) & Counter(expected)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(predicted), overlap / len(expected)
    return 2 * precision * recall / (precision + recall)


def best_over_golds(metric, prediction: str, golds: Sequence[str]) -> float:
    """The best score against any gold answer; no gold answers means the answer is 'no answer' ("")."""
    return max(metric(prediction, gold) for gold in (list(golds) or [""]))


def squad_scores(
    predictions: Sequence[str], golds: Sequence[Sequence[str]], names: Sequence[str] = ("exact-match", "f1")
) -> dict[str, float]:
    """{'exact_match', 'f1'} (those asked for by names) averaged over the questions."""
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} questions")
    pairs = list(zip(predictions, golds, strict=True))
    n = max(1, len(pairs))
    out: dict[str, float] = {}
    if "exact-match" in names:
        out["exact_match"] = sum(best_over_golds(exact_match, p, g) for p, g in pairs) / n
    if "f1" in names:
        out["f1"] = sum(best_over_golds(f1, p, g) for p, g in pairs) / n
    return out
