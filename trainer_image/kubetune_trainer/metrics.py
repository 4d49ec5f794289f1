"""Evaluation metrics as compute_metrics functions (scikit-learn, rouge_score, sacrebleu; no Hub access)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

CLASSIFICATION = ("accuracy", "f1", "precision", "recall")
TEXT = ("rouge", "bleu", "exact-match")


def classification_scores(
    preds: Sequence[int] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    names: Sequence[str],
    num_labels: int,
    average: str | None = None,
) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    out: dict[str, float] = {}
    if "accuracy" in names:
        out["accuracy"] = float(accuracy_score(labels, preds))
    wanted = [n for n in ("f1", "precision", "recall") if n in names]
    if wanted:
        average = average or ("binary" if num_labels == 2 else "macro")
        precision, recall, f1, _ = precision_recall_fscore_support(
            labels, preds, average=average, zero_division=0
        )
        values = {"f1": f1, "precision": precision, "recall": recall}
        out.update({n: float(values[n]) for n in wanted})
    return out


def text_scores(
    predictions: Sequence[str], references: Sequence[str], names: Sequence[str]
) -> dict[str, float]:
    out: dict[str, float] = {}
    if "rouge" in names:
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
        totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
        for pred, ref in zip(predictions, references, strict=True):
            scores = scorer.score(ref, pred)
            for key in totals:
                totals[key] += scores[key].fmeasure
        n = max(1, len(predictions))
        out.update({key: value / n for key, value in totals.items()})
    if "bleu" in names:
        import sacrebleu

        out["bleu"] = float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)
    if "exact-match" in names:
        matches = [p.strip() == r.strip() for p, r in zip(predictions, references, strict=True)]
        out["exact_match"] = float(np.mean(matches)) if matches else 0.0
    return out


def perplexity(metrics: dict[str, float], prefix: str = "eval") -> dict[str, float]:
    loss = metrics.get(f"{prefix}_loss")
    if loss is None:
        return {}
    return {f"{prefix}_perplexity": float(math.exp(min(loss, 50.0)))}


def training_perplexity(log_history: list[dict], metrics: dict[str, float]) -> dict[str, float]:
    """exp of the training loss when there is no held-out data: the last logged loss (the mean over the final
    logging window, which reflects the trained model better than train_loss, the mean over the whole run)."""
    losses = [entry["loss"] for entry in log_history if "loss" in entry]
    loss = losses[-1] if losses else metrics.get("train_loss")
    if loss is None:
        return {}
    return {"train_perplexity": float(math.exp(min(loss, 50.0)))}


def _argmax_and_labels(eval_pred) -> tuple[np.ndarray, np.ndarray]:
    """Predicted class ids and the labels of a transformers EvalPrediction (logits may come in a tuple)."""
    logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
    return np.argmax(logits, axis=-1), eval_pred.label_ids


def sequence_classification(names: Sequence[str], num_labels: int) -> Callable | None:
    if not any(n in CLASSIFICATION for n in names):
        return None

    def compute(eval_pred) -> dict[str, float]:
        preds, labels = _argmax_and_labels(eval_pred)
        return classification_scores(preds, labels, names, num_labels)

    return compute


def token_classification(names: Sequence[str], num_labels: int) -> Callable | None:
    if not any(n in CLASSIFICATION for n in names):
        return None

    def compute(eval_pred) -> dict[str, float]:
        preds, labels = _argmax_and_labels(eval_pred)
        mask = labels != -100
        return classification_scores(preds[mask], labels[mask], names, num_labels, average="macro")

    return compute


def seq2seq(names: Sequence[str], tokenizer) -> Callable | None:
    """Scores of generated text (Seq2SeqTrainer with predict_with_generate)."""
    if not any(n in TEXT for n in names):
        return None

    def compute(eval_pred) -> dict[str, float]:
        preds, labels = eval_pred.predictions, eval_pred.label_ids
        if isinstance(preds, tuple):
            preds = preds[0]
        pad = tokenizer.pad_token_id or 0
        preds = np.where(preds < 0, pad, preds)
        labels = np.where(labels < 0, pad, labels)
        predictions = tokenizer.batch_decode(preds, skip_special_tokens=True)
        references = tokenizer.batch_decode(labels, skip_special_tokens=True)
        return text_scores(predictions, references, names)

    return compute
